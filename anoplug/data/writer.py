"""Write generated anomalies as an MVTec-AD tree that anomalib reads unchanged.

Layout under ``<out>/<category>/``::

    train/good/NNNNNN.png                  normals copied from the source
    test/<label>/NNNNNN.png                generated samples (label "good" -> test/good)
    ground_truth/<label>/NNNNNN_mask.png   0/255 masks of the anomalous ones
    manifest.jsonl                         one line per sample, sorted by index
    draws/NNNNNN.safetensors               a sample's big draws (tensors over 64 values), if any

Sample *i* uses source image ``i % len(source)`` and seed ``sample_seed(seed, i)`` alone,
so the output does not depend on the batch size or on how often the run was interrupted.
Each record holds the sample's draws losslessly (``sample``, big tensors in its side file),
so :func:`replay_manifest` regenerates the tree byte for byte from the manifest alone.
Every file is written to a temporary name in its directory and renamed into place;
finished samples are journalled, so a re-run skips them and a killed run resumes to the
same bytes an uninterrupted one writes. A directory that holds another run (different
method, version, parameters, seed or source) is refused rather than mixed.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anoplug.data.base import DataError, Dataset
from anoplug.data.inputs import ConditionSource, sample_inputs, source_indices
from anoplug.generator import Samples
from anoplug.seeding import sample_seed
from anoplug.serial import pack
from anoplug.types import GOOD, Batch, to_uint8

__all__ = ["WriteSummary", "write_generated", "replay_manifest", "MANIFEST", "JOURNAL"]

MANIFEST = "manifest.jsonl"
JOURNAL = ".manifest.journal.jsonl"  # finished samples of an unfinished run, appended as they complete
_TMP = ".anoplug-tmp"
_IDENTITY = ("method", "method_version", "params", "seed", "dataset", "conditions")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class WriteSummary:
    """What a :func:`write_generated` call did."""

    root: Path
    written: int
    skipped: int
    manifest: Path
    labels: dict[str, int] = field(default_factory=dict)  # samples per label in the whole manifest


def _safe_label(label: str) -> str:
    """Labels become directory names: keep letters, digits, ``_ . -`` and nothing that escapes."""
    s = _SAFE.sub("_", str(label)).strip("._") or "anomaly"
    return s


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{_TMP}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _png_bytes(arr: np.ndarray) -> bytes:
    """Lossless PNG; zlib level 3 encodes ~2.5x faster than PIL's default 6 for ~15 % more bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _dumps(rec: dict) -> str:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _read_jsonl(path: Path, *, tolerate_torn_tail: bool) -> list[dict]:
    """Records of a JSON-lines file; a journal's torn last line (a killed write) is dropped."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and k == len(lines) - 1:
                break
            raise DataError(f"{path} line {k + 1} is not valid JSON ({e}); remove the file or choose another --out") from e
    return out


def _dataset_id(source: Dataset) -> str:
    return f"{source.scheme or type(source).__name__}:{source.category}@{source.size}"


def _check_same_run(root: Path, records: Iterable[dict], identity: dict) -> None:
    for rec in records:
        theirs = {k: rec.get(k) for k in _IDENTITY}
        if theirs != identity:
            diff = [k for k in _IDENTITY if theirs[k] != identity[k]]
            raise DataError(
                f"{root} already holds samples of a different run ({', '.join(diff)} differ: "
                f"{ {k: theirs[k] for k in diff} } there vs { {k: identity[k] for k in diff} } now); "
                "refusing to mix them — choose another output directory")
        return  # all records of a directory were written by one run; the first decides


def _complete(root: Path, rec: dict) -> bool:
    return (root / rec["image"]).is_file() and (rec.get("mask") is None or (root / rec["mask"]).is_file())


def _caption(out: Batch, src: Batch, k: int, label: str, method: str) -> str:
    """The generator's caption if it wrote one; the source's for a normal; else a plain one."""
    if out.text is not None and (src.text is None or out.text[k] != src.text[k] or label == GOOD):
        return out.text[k]
    if label == GOOD and src.text is not None:
        return src.text[k]
    kind = "" if label == _safe_label(method) else f"{label.replace('_', ' ')} "
    return f"a synthetic {kind}anomaly made by {method}"


def _clean_temporaries(root: Path) -> None:
    if root.is_dir():
        for p in root.rglob(f"*{_TMP}"):
            p.unlink(missing_ok=True)


def _copy_train(source: Dataset, root: Path, n_train: int, batch_size: int) -> None:
    todo = [j for j in range(n_train) if not (root / "train" / GOOD / f"{j:06d}.png").is_file()]
    for s in range(0, len(todo), batch_size):
        idx = todo[s:s + batch_size]
        b = source.batch(idx)
        for k, arr in enumerate(to_uint8(b.image)):
            _atomic_write(root / "train" / GOOD / f"{idx[k]:06d}.png", _png_bytes(arr))


def _draws_bytes(store: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in sorted(store.items())})


def _read_draws(root: Path, rec: dict) -> dict:
    """The side file of a record's big draws (``draws/NNNNNN.safetensors``), or nothing."""
    if not rec.get("draws"):
        return {}
    from safetensors.torch import load_file

    path = root / rec["draws"]
    if not path.is_file():
        raise DataError(f"{path}: side file of sample {rec.get('index')} is missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise DataError(f"cannot read {path}: {e}") from e


def write_generated(generator: Any, source: Dataset, out: str | Path, *, n: int, seed: int = 0, batch_size: int = 16,
                    n_train: int | None = None, progress: bool = True, conditions: ConditionSource | None = None,
                    data: str | None = None, replay: dict[int, dict] | None = None,
                    replay_root: Path | None = None) -> WriteSummary:
    """Generate ``n`` samples from the normals of ``source`` and write them under ``out/<category>``.

    Re-running the same call resumes (finished samples are skipped; an immediate re-run
    writes nothing). ``conditions`` gives per-sample target masks, boxes or a prompt;
    ``data`` is the ``--data`` spec recorded for ``--replay``; ``replay`` (index -> the
    manifest record of an earlier run under ``replay_root``) regenerates from recorded draws.
    """
    if n < 1:
        raise DataError(f"n must be at least 1, got {n}")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    if len(source) < 1:
        raise DataError(f"source dataset {source!r} is empty")
    if n_train is not None and n_train < 0:
        raise DataError(f"n_train must be non-negative, got {n_train}")
    n_train = min(len(source), 64 if n_train is None else int(n_train))  # never more normals than the source has
    unused = [c for c in (conditions.names() if conditions else ()) if c not in generator.requires.uses]
    if unused:  # refuse before anything is written
        raise DataError(f"{generator.name} does not use conditions.{unused[0]} "
                        f"(it uses: {', '.join(generator.requires.uses) or 'none'})")
    root = Path(out) / _safe_label(source.category or "dataset")
    identity = {"method": generator.name, "method_version": generator.version,
                "params": generator.params.model_dump(mode="json"), "seed": int(seed), "dataset": _dataset_id(source),
                "conditions": conditions.identity() if conditions else None}
    identity = json.loads(json.dumps(identity))  # normalise (tuples -> lists) to compare with what was read back

    manifest_path, journal_path = root / MANIFEST, root / JOURNAL
    previous = _read_jsonl(manifest_path, tolerate_torn_tail=False) + _read_jsonl(journal_path, tolerate_torn_tail=True)
    _check_same_run(root, previous, identity)
    _clean_temporaries(root)
    records: dict[int, dict] = {}
    for rec in previous:
        if _complete(root, rec):
            records[int(rec["index"])] = rec
    root.mkdir(parents=True, exist_ok=True)
    _copy_train(source, root, n_train, batch_size)

    todo = [i for i in range(n) if i not in records]
    skipped = n - len(todo)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=skipped, desc=f"{generator.name} -> {root}", unit="img")
    try:
        with open(journal_path, "a", encoding="utf-8") as journal:
            for s in range(0, len(todo), batch_size):
                idx = todo[s:s + batch_size]
                src_idx = source_indices(idx, len(source))
                src = sample_inputs(generator, source, idx, conditions)
                seeds = [sample_seed(seed, i) for i in idx]
                drawn = None
                if replay is not None:
                    drawn = [Samples.unpack([replay[i]["sample"]], _read_draws(replay_root, replay[i]))[0] for i in idx]
                gen_out = generator.generate(src, seeds=seeds, samples=drawn)
                images, masks = to_uint8(gen_out.image), to_uint8(gen_out.mask)[..., 0]
                lines = []
                for k, i in enumerate(idx):
                    label = _safe_label(gen_out.label[k])
                    store: dict = {}
                    packed = pack(gen_out.meta[k].get("sample"), store, prefix="sample")
                    rec = dict(identity, index=i, label=label, image=f"test/{label}/{i:06d}.png", mask=None,
                               sample_seed=seeds[k], source_index=src_idx[k], data=data, n_train=n_train,
                               source=str(src.meta[k].get("source", f"{_dataset_id(source)}/{src_idx[k]}")),
                               caption=_caption(gen_out, src, k, label, generator.name), sample=packed,
                               draws=f"draws/{i:06d}.safetensors" if store else None,
                               sample_conditions=conditions.for_sample(i) if conditions else None)
                    if store:
                        _atomic_write(root / rec["draws"], _draws_bytes(store))
                    _atomic_write(root / rec["image"], _png_bytes(images[k]))
                    if label != GOOD:
                        rec["mask"] = f"ground_truth/{label}/{i:06d}_mask.png"
                        _atomic_write(root / rec["mask"], _png_bytes(np.where(masks[k] >= 128, 255, 0).astype(np.uint8)))
                    records[i] = rec
                    lines.append(_dumps(rec) + "\n")
                journal.write("".join(lines))
                journal.flush()
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()

    text = "".join(_dumps(records[i]) + "\n" for i in sorted(records))
    if not manifest_path.is_file() or manifest_path.read_text(encoding="utf-8") != text:
        _atomic_write(manifest_path, text.encode("utf-8"))
    journal_path.unlink(missing_ok=True)
    labels = dict(sorted(Counter(r["label"] for r in records.values()).items()))
    return WriteSummary(root=root, written=len(todo), skipped=skipped, manifest=manifest_path, labels=labels)


def replay_manifest(manifest: str | Path, out: str | Path, *, load: str | Path | None = None, batch_size: int = 16,
                    progress: bool = True) -> WriteSummary:
    """Regenerate the dataset a manifest describes from its recorded draws, byte for byte, under ``out``.

    Procedural methods need nothing else; a learned method needs its fitted weights (``load``).
    """
    from anoplug.data import open_dataset
    from anoplug.registry import get_registry

    path = Path(manifest)
    if not path.is_file():
        raise DataError(f"--replay {path}: manifest not found")
    records = _read_jsonl(path, tolerate_torn_tail=False)
    if not records:
        raise DataError(f"--replay {path}: the manifest is empty")
    first = records[0]
    missing = [k for k in ("method", "params", "seed", "dataset", "data", "sample", "index") if k not in first]
    if missing:
        raise DataError(f"--replay {path}: records lack {', '.join(missing)} (written by an older anoplug?)")
    if not first["data"]:
        raise DataError(f"--replay {path}: the run did not record its --data source")
    by_index = {int(r["index"]): r for r in records}
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"--replay {path}: sample indices are not 0..{len(by_index) - 1} (an unfinished run?)")
    cls = get_registry().generator_class(first["method"])
    if cls.requires.fit and not load:
        raise DataError(f"--replay {path}: {first['method']} is a learned method; pass --load DIR with its weights")
    gen = cls.load(load) if load else cls(**first["params"])
    if gen.params.model_dump(mode="json") != first["params"]:
        raise DataError(f"--replay {path}: the parameters saved in {load} differ from the manifest's")
    if gen.version != first["method_version"]:
        raise DataError(f"--replay {path}: written by {first['method']} {first['method_version']}, "
                        f"installed is {gen.version}")
    size = int(str(first["dataset"]).rsplit("@", 1)[1])
    source = open_dataset(first["data"], split="train", size=size)
    cond = first.get("conditions") or {}
    conditions = ConditionSource(masks=(cond.get("masks") or {}).get("dir"), boxes=(cond.get("boxes") or {}).get("file"),
                                 prompt=cond.get("prompt")) if cond else None
    return write_generated(gen, source, out, n=len(by_index), seed=int(first["seed"]), batch_size=batch_size,
                           n_train=first.get("n_train"), progress=progress, conditions=conditions, data=first["data"],
                           replay=by_index, replay_root=path.parent)
