"""Exports of a generated tree for the tools users already have: Hugging Face ``datasets`` and COCO.

``anoplug generate`` writes an MVTec-AD tree (:mod:`anoplug.data.writer`). Two other readers
are asked for, and this module converts a *finished* tree for them without touching it:

- :func:`export_hf`: a parquet dataset that ``datasets.load_dataset("parquet", ...)`` (or
  ``load_dataset(DIR)``) reads offline — ``image`` and ``mask`` in the ``datasets.Image`` layout
  (the tree's PNG bytes, byte for byte), ``label``, ``caption``, ``split`` and the provenance of
  each row from the run's ``manifest.jsonl`` (method, version, parameters, seeds, source);
- :func:`export_coco`: COCO instance annotations for detection users — one category per defect
  label, one annotation per connected component of a mask (8-connected) with its box, area and
  RLE segmentation (``pycocotools.mask.encode``); ``iscrowd`` is 0, so COCO evaluation scores
  every defect instead of ignoring it as a crowd region.

Rows: ``train/good`` (the run's copied normals ``0 .. n_train-1``, provenance: their source
index) and every manifest record (the ``test`` split). A tree is the folder ``--out`` of
``anoplug generate`` (every category under it) or one category folder of it. Bad input is one
:class:`~anoplug.data.base.DataError` naming the file; an unfinished run is refused; output goes
to a temporary beside its target, renamed into place when complete, so nothing is half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anoplug.data.base import DataError
from anoplug.data.files import TMP, atomic_write, make_dir
from anoplug.data.writer import JOURNAL, MANIFEST
from anoplug.types import GOOD

__all__ = ["ExportSummary", "Row", "export_hf", "export_coco", "tree_roots", "tree_rows", "caption_for", "HF_COLUMNS"]

_PNG = b"\x89PNG\r\n\x1a\n"
#: rows per parquet row group (and per batch held in memory while writing)
_CHUNK = 64
#: the plain caption the driver writes when neither the generator nor the source has one (anoplug.driver.work)
_DRIVER_FALLBACK = re.compile(r"a synthetic (?:.+ )?anomaly made by .+")
#: the dataset's columns, in order; see docs/export.md
HF_COLUMNS = ("image", "mask", "label", "anomalous", "caption", "split", "category", "file", "mask_file", "index",
              "source_index", "source", "method", "method_version", "params", "seed", "sample_seed", "dataset", "data",
              "record")


@dataclass
class Row:
    """One image of the tree: where its files lie and, for a generated sample, its manifest record."""

    root: Path  # the category folder
    split: str
    file: str  # relative to ``root``
    label: str
    mask_file: str | None = None
    source_index: int | None = None
    record: dict | None = None

    @property
    def category(self) -> str:
        return self.root.name


@dataclass
class ExportSummary:
    """What an export wrote."""

    out: Path
    format: str
    rows: dict[str, int] = field(default_factory=dict)  # images per split
    annotations: int = 0
    categories: int = 0

    def line(self) -> str:
        rows = ", ".join(f"{n} {split}" for split, n in self.rows.items())
        extra = f", {self.annotations} annotations in {self.categories} categories" if self.format == "coco" else ""
        return f"exported {sum(self.rows.values())} images ({rows}){extra} as {self.format} to {self.out}"


# -- reading the tree -----------------------------------------------------------------------------------------------
def tree_roots(tree_dir: str | Path) -> list[Path]:
    """The category folders of a finished tree: ``tree_dir`` itself if it holds a manifest, else its subfolders that do."""
    d = Path(tree_dir)
    if not d.is_dir():
        raise DataError(f"--tree {d}: not a directory")
    candidates = [d] if (d / MANIFEST).exists() or (d / JOURNAL).exists() else sorted(
        p for p in d.iterdir() if p.is_dir() and ((p / MANIFEST).exists() or (p / JOURNAL).exists()))
    if not candidates:
        raise DataError(f"--tree {d}: no {MANIFEST} in it or in its subfolders (not a tree written by anoplug generate)")
    for root in candidates:
        if (root / JOURNAL).exists():
            raise DataError(f"--tree {root}: the run is unfinished or still writing ({JOURNAL} is there); finish it "
                            "(run the same anoplug generate again) before exporting")
        if not (root / MANIFEST).is_file():
            raise DataError(f"--tree {root / MANIFEST}: not a file")
    return candidates


def _inside(root: Path, rel: Any, where: str) -> str:
    """``rel`` as a relative path that stays inside ``root`` (a record cannot point outside its tree)."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        raise DataError(f"{where}: expected a relative file path, got {rel!r}")
    if not (root / rel).resolve().is_relative_to(root.resolve()):
        raise DataError(f"{where}: {rel!r} points outside the tree {root}")
    return rel


def _records(root: Path) -> Iterator[dict]:
    """The manifest's records, streamed and checked (a line that is not a sample record is a DataError)."""
    path = root / MANIFEST
    with open(path, "rb") as f:
        for k, raw in enumerate(f):
            if not raw.strip():
                continue
            where = f"{path} line {k + 1}"
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{where} is not valid JSON ({e})") from e
            if not isinstance(rec, dict):
                raise DataError(f"{where} is not a record (a JSON object)")
            missing = [key for key in ("index", "label", "image", "mask") if key not in rec]
            if missing:
                raise DataError(f"{where} lacks {', '.join(missing)} (not written by anoplug generate?)")
            if isinstance(rec["index"], bool) or not isinstance(rec["index"], int) or not isinstance(rec["label"], str):
                raise DataError(f"{where}: index must be an integer and label a string")
            _inside(root, rec["image"], where)
            if rec["mask"] is not None:
                _inside(root, rec["mask"], where)
            elif rec["label"] != GOOD and rec.get("provides_mask") is not False:  # mask-less by design: no mask
                raise DataError(f"{where}: a {rec['label']!r} sample without a mask")
            yield rec


def tree_rows(root: Path) -> Iterator[Row]:
    """Every image of one category folder: the copied normals (train), then the manifest's samples (test)."""
    first: dict | None = None
    for rec in _records(root):  # the first record names n_train; read it before the normals
        first = rec
        break
    n_train = (first or {}).get("n_train") or 0
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 0:
        raise DataError(f"{root / MANIFEST} line 1: n_train must be a non-negative integer, got {n_train!r}")
    for j in range(n_train):
        rel = f"train/{GOOD}/{j:06d}.png"
        yield Row(root=root, split="train", file=rel, label=GOOD, source_index=j)
    for rec in _records(root):
        src = rec.get("source_index")
        yield Row(root=root, split="test", file=rec["image"], label=rec["label"], mask_file=rec["mask"],
                  source_index=src if isinstance(src, int) else None, record=rec)


def _read_png(root: Path, rel: str) -> tuple[bytes, tuple[int, int]]:
    """The file's bytes and (width, height); a missing, empty or non-PNG file is a DataError naming it."""
    path = root / rel
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found (the tree is incomplete)") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: a directory where an image belongs") from e
    if not data.startswith(_PNG):
        raise DataError(f"{path}: not a PNG file")
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            return data, im.size
    except Exception as e:  # PIL raises many types for a corrupt header
        raise DataError(f"{path}: unreadable PNG ({e})") from e


def _material(root: Path, rec: dict | None) -> str:
    """What the images show, for a generated caption: the toy category's material phrase, else the category name."""
    dataset = str((rec or {}).get("dataset") or "")
    if dataset.startswith("toy:"):
        from anoplug.data.toy import CATEGORIES

        info = CATEGORIES.get(root.name)
        if info:
            return info["material"]
    return root.name.replace("_", " ")


def caption_for(row: Row, material: str) -> str:
    """The manifest's caption when it is the generator's or the source's text; else ``a photo of M with a LABEL``."""
    rec = row.record or {}
    cap = rec.get("caption")
    if isinstance(cap, str) and cap.strip() and not _DRIVER_FALLBACK.fullmatch(cap):
        return cap
    if row.label == GOOD:
        return f"a photo of {material}"
    return f"a photo of {material} with a {row.label.replace('_', ' ')}"


# -- output paths ---------------------------------------------------------------------------------------------------
def _refuse_inside(out: Path, roots: list[Path], tree_dir: Path, flag: str = "--out") -> None:
    mine = out.expanduser().resolve()
    for top in (tree_dir, *roots):
        theirs = top.resolve()
        if mine == theirs or mine.is_relative_to(theirs):
            raise DataError(f"{flag} {out}: inside the tree {theirs}; writing there would mix export files into the "
                            "MVTec layout — choose a path outside it")


def _require_module(name: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise DataError(f"{what} needs {name.split('.')[0]}: pip install 'anoplug[export]'") from e


# -- Hugging Face datasets --------------------------------------------------------------------------------------------
def _hf_features() -> Any:
    datasets = _require_module("datasets", "--format hf-datasets")
    V = datasets.Value
    cols = {"image": datasets.Image(), "mask": datasets.Image(), "label": V("string"), "anomalous": V("bool"),
            "caption": V("string"), "split": V("string"), "category": V("string"), "file": V("string"),
            "mask_file": V("string"), "index": V("int64"), "source_index": V("int64"), "source": V("string"),
            "method": V("string"), "method_version": V("string"), "params": V("string"), "seed": V("int64"),
            "sample_seed": V("int64"), "dataset": V("string"), "data": V("string"), "record": V("string")}
    return datasets.Features({k: cols[k] for k in HF_COLUMNS})


def _hf_row(row: Row, run: dict, prefix: str) -> dict[str, Any]:
    """One parquet row; ``run`` is the category's first record (its run identity), ``prefix`` the category folder."""
    image, size = _read_png(row.root, row.file)
    mask = None
    if row.mask_file is not None:
        mask, msize = _read_png(row.root, row.mask_file)
        if msize != size:
            raise DataError(f"{row.root / row.mask_file}: mask is {msize[0]}x{msize[1]} but its image is "
                            f"{size[0]}x{size[1]}")
    rec = row.record
    dumps = lambda v: None if v is None else json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {
        "image": {"bytes": image, "path": prefix + row.file},
        "mask": None if mask is None else {"bytes": mask, "path": prefix + row.mask_file},
        "label": row.label, "anomalous": row.label != GOOD, "caption": caption_for(row, _material(row.root, run)),
        "split": row.split, "category": row.category, "file": prefix + row.file,
        "mask_file": None if row.mask_file is None else prefix + row.mask_file,
        "index": None if rec is None else rec["index"], "source_index": row.source_index,
        "source": None if rec is None else rec.get("source"),
        "method": None if rec is None else rec.get("method"),
        "method_version": None if rec is None else rec.get("method_version"),
        "params": None if rec is None else dumps(rec.get("params")),
        "seed": None if rec is None else rec.get("seed"),
        "sample_seed": None if rec is None else rec.get("sample_seed"),
        "dataset": run.get("dataset"), "data": run.get("data"), "record": dumps(rec),
    }


def _first_record(root: Path) -> dict:
    for rec in _records(root):
        return rec
    raise DataError(f"--tree {root / MANIFEST}: the manifest is empty")


def _card(splits: dict[str, int], roots: list[Path], runs: list[dict]) -> str:
    from anoplug._version import __version__

    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    lines += ["---", "", "# Synthetic anomalies exported by anoplug", "",
              f"Exported by anoplug {__version__} from an `anoplug generate` tree; the columns are described in "
              "anoplug's docs/export.md.", "", "| category | method | version | seed | source |", "|---|---|---|---|---|"]
    for root, run in zip(roots, runs):
        lines.append(f"| {root.name} | {run.get('method')} | {run.get('method_version')} | {run.get('seed')} | "
                     f"{run.get('data') or run.get('dataset')} |")
    lines += ["", "Rows per split: " + ", ".join(f"{split} {n}" for split, n in splits.items()), ""]
    return "\n".join(lines)


def _fresh_dir(out: Path) -> None:
    """Refuse an output folder that exists with something in it, or a file in its place."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"--out {out}: the folder exists and is not empty; choose a new folder or remove it")


def export_hf(tree_dir: str | Path, out_dir: str | Path) -> ExportSummary:
    """Write ``out_dir`` (a new folder): ``data/{train,test}-00000-of-00001.parquet`` and a dataset card.

    Load it offline with ``datasets.load_dataset("parquet", data_files={...}, split="test")`` or
    ``datasets.load_dataset(out_dir)``. Rows are streamed in chunks of 64: memory stays flat in the tree's size.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tree, out = Path(tree_dir), Path(out_dir)
    roots = tree_roots(tree)
    _refuse_inside(out, roots, tree)
    _fresh_dir(out)
    features = _hf_features()
    schema = features.arrow_schema
    runs = [_first_record(r) for r in roots]
    prefixes = ["" if r == tree else f"{r.name}/" for r in roots]
    make_dir(out.parent)
    tmp = out.with_name(f".{out.name}{TMP}")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, int] = {}
    try:
        make_dir(tmp / "data")
        for split in ("train", "test"):
            path = tmp / "data" / f"{split}-00000-of-00001.parquet"
            writer, chunk = None, []
            try:
                for root, run, prefix in zip(roots, runs, prefixes):
                    for row in tree_rows(root):
                        if row.split != split:
                            continue
                        chunk.append(_hf_row(row, run, prefix))
                        if len(chunk) >= _CHUNK:
                            writer = writer or pq.ParquetWriter(path, schema)
                            writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema=schema))
                            counts[split] = counts.get(split, 0) + len(chunk)
                            chunk = []
                if chunk:
                    writer = writer or pq.ParquetWriter(path, schema)
                    writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema=schema))
                    counts[split] = counts.get(split, 0) + len(chunk)
            finally:
                if writer is not None:
                    writer.close()
        (tmp / "README.md").write_text(_card(counts, roots, runs), encoding="utf-8")
        if out.is_dir():
            out.rmdir()  # empty (checked above): the rename takes its place
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportSummary(out=out, format="hf-datasets", rows=counts)


# -- COCO ------------------------------------------------------------------------------------------------------------
def _components(mask: np.ndarray) -> Iterator[np.ndarray]:
    """The 8-connected components of a boolean mask, each as a boolean mask, in label order."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    for c in range(1, n + 1):
        yield labels == c


def _annotation(component: np.ndarray, mask_utils: Any) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(component.astype(np.uint8)))
    ys, xs = np.nonzero(component)
    x0, y0 = int(xs.min()), int(ys.min())
    return {"segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(component.sum()), "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            "iscrowd": 0}


def export_coco(tree_dir: str | Path, out_json: str | Path) -> ExportSummary:
    """Write COCO instance annotations of the tree to ``out_json`` (replaced atomically if it exists).

    ``images`` lists every image (normals too: detection needs negatives), ``file_name``
    relative to ``tree_dir``; ``categories`` one per defect label (sorted, ids from 1);
    ``annotations`` one per connected component of each mask.
    """
    from anoplug.types import load_image

    mask_utils = _require_module("pycocotools.mask", "--format coco")
    tree, out = Path(tree_dir), Path(out_json)
    roots = tree_roots(tree)
    _refuse_inside(out, roots, tree)
    if out.is_dir():
        raise DataError(f"--out {out}: a folder; give the path of the JSON file to write")
    labels: set[str] = set()
    for root in roots:  # a first pass over the manifests alone: the categories
        labels.update(rec["label"] for rec in _records(root) if rec["label"] != GOOD)
    cats = {label: k + 1 for k, label in enumerate(sorted(labels))}
    images: list[dict] = []
    annotations: list[dict] = []
    counts: dict[str, int] = {}
    for root in roots:
        run = _first_record(root)
        prefix = "" if root == tree else f"{root.name}/"
        material = _material(root, run)
        for row in tree_rows(root):
            _, (w, h) = _read_png(root, row.file)
            image_id = len(images) + 1
            rec = row.record or {}
            images.append({"id": image_id, "file_name": prefix + row.file, "width": w, "height": h,
                           "split": row.split, "label": row.label, "category": row.category,
                           "caption": caption_for(row, material), "sample_index": rec.get("index"),
                           "source_index": row.source_index})
            counts[row.split] = counts.get(row.split, 0) + 1
            if row.mask_file is None:
                continue
            _read_png(root, row.mask_file)  # a missing or non-PNG mask is named before decoding
            m = load_image(root / row.mask_file, mode="mask") > 0
            if m.shape != (h, w):
                raise DataError(f"{root / row.mask_file}: mask is {m.shape[1]}x{m.shape[0]} but its image is {w}x{h}")
            for comp in _components(m):
                annotations.append(dict(_annotation(comp, mask_utils), id=len(annotations) + 1, image_id=image_id,
                                        category_id=cats[row.label]))
    from anoplug._version import __version__

    doc = {"info": {"description": "synthetic anomalies exported by anoplug from an anoplug generate tree",
                    "version": __version__,
                    "runs": [{k: r.get(k) for k in ("method", "method_version", "params", "seed", "dataset", "data")}
                             for r in (_first_record(root) for root in roots)]},
           "licenses": [], "images": images, "annotations": annotations,
           "categories": [{"id": i, "name": label, "supercategory": "anomaly"} for label, i in cats.items()]}
    atomic_write(out, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return ExportSummary(out=out, format="coco", rows=counts, annotations=len(annotations), categories=len(cats))
