"""Exports of a generated tree: Hugging Face parquet (read back by ``datasets``, offline) and COCO (read by pycocotools)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: it reads the flag once

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from anoplug.cli import main  # noqa: E402
from anoplug.data.export import _components, export_coco, export_hf  # noqa: E402
from anoplug.data.toy import ToyDataset  # noqa: E402
from anoplug.data.writer import JOURNAL, MANIFEST, write_generated  # noqa: E402
from anoplug.generator import Generator, Paper  # noqa: E402
from anoplug.types import Batch  # noqa: E402
from tests.test_writer import BoxGenerator  # noqa: E402

datasets = pytest.importorskip("datasets", reason="datasets is in the export extra")
coco_api = pytest.importorskip("pycocotools.coco", reason="pycocotools is in the export extra")
mask_utils = pytest.importorskip("pycocotools.mask")

SIZE = 64


class TwinBoxes(Generator):
    """Two separate squares per sample (two components of one mask); a caption of its own."""

    name = "twinboxes"
    title = "Test twin boxes"
    category = "cutpaste"
    paper = Paper("none")

    def sample(self, batch: Batch, rngs):
        h, w = batch.size
        return [{"y": [int(torch.randint(0, h - 12, (1,), generator=g)) for _ in range(2)],
                 "x": [int(torch.randint(0, w // 2 - 12, (1,), generator=g)), w // 2 + 4]} for g in rngs]

    def apply(self, batch: Batch, samples):
        mask = torch.zeros_like(batch.mask)
        for k, s in enumerate(samples):
            for y, x in zip(s["y"], s["x"]):
                mask[k, :, y:y + 8, x:x + 8] = 1
        image = batch.image * (1 - mask)
        return Batch(image=image, mask=mask, label=["twin_box"] * len(batch), meta=[{} for _ in samples],
                     text=["two dark squares on wood grain"] * len(batch))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    write_generated(BoxGenerator(), ToyDataset("metal", size=SIZE, length=8), out, n=6, seed=3, n_train=2,
                    progress=False, data="toy:metal")
    write_generated(TwinBoxes(), ToyDataset("wood", size=SIZE, length=8), out, n=3, seed=1, n_train=0, progress=False,
                    data="toy:wood")
    return out


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]


@pytest.fixture(scope="module")
def hf_dir(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "dataset"
    export_hf(tree, out)
    return out


def _load(hf_dir: Path, split: str, cache: Path):
    files = {s: str(hf_dir / "data" / f"{s}-00000-of-00001.parquet") for s in ("train", "test")}
    return datasets.load_dataset("parquet", data_files=files, split=split, cache_dir=str(cache))


# -- Hugging Face ----------------------------------------------------------------------------------------------------
def test_hf_rows_are_the_tree_files_with_the_manifest_provenance(tree: Path, hf_dir: Path, tmp_path: Path) -> None:
    test = _load(hf_dir, "test", tmp_path / "cache")
    recs = {(root.name, r["index"]): r for root in (tree / "metal", tree / "wood") for r in _records(root)}
    assert len(test) == len(recs) == 9
    raw = test.cast_column("image", datasets.Image(decode=False)).cast_column("mask", datasets.Image(decode=False))
    for row, enc in zip(test, raw):
        rec = recs[(row["category"], row["index"])]
        root = tree / row["category"]
        assert enc["image"]["bytes"] == (root / rec["image"]).read_bytes()  # byte for byte
        assert np.array_equal(np.asarray(row["image"]), np.asarray(Image.open(root / rec["image"])))
        if rec["mask"] is None:
            assert row["mask"] is None and row["label"] == "good" and not row["anomalous"]
        else:
            assert enc["mask"]["bytes"] == (root / rec["mask"]).read_bytes() and row["anomalous"]
            assert np.array_equal(np.asarray(row["mask"]), np.asarray(Image.open(root / rec["mask"])))
        assert row["file"] == f"{row['category']}/{rec['image']}" and row["split"] == "test"
        assert (row["label"], row["method"], row["method_version"], row["seed"], row["sample_seed"],
                row["source_index"], row["source"], row["dataset"], row["data"]) == \
               (rec["label"], rec["method"], rec["method_version"], rec["seed"], rec["sample_seed"],
                rec["source_index"], rec["source"], rec["dataset"], rec["data"])
        assert json.loads(row["params"]) == rec["params"] and json.loads(row["record"]) == rec


def test_hf_captions_come_from_the_data_or_say_what_the_image_shows(hf_dir: Path, tmp_path: Path) -> None:
    test = _load(hf_dir, "test", tmp_path / "cache")
    caps = {(r["category"], r["label"]): r["caption"] for r in test.remove_columns(["image", "mask"])}
    assert caps[("metal", "good")] == "a normal brushed metal surface"  # the toy source's own caption
    assert caps[("metal", "dark_box")] == "a photo of brushed metal with a dark box"  # no caption: generated
    assert caps[("wood", "twin_box")] == "two dark squares on wood grain"  # the generator's caption


def test_hf_train_split_is_the_copied_normals(tree: Path, hf_dir: Path, tmp_path: Path) -> None:
    train = _load(hf_dir, "train", tmp_path / "cache")
    raw = train.cast_column("image", datasets.Image(decode=False))
    assert len(train) == 2 and train["source_index"] == [0, 1] and set(train["label"]) == {"good"}
    for j, enc in enumerate(raw):
        assert enc["image"]["bytes"] == (tree / "metal" / "train" / "good" / f"{j:06d}.png").read_bytes()
        assert enc["method"] is None and enc["mask"] is None and enc["caption"] == "a photo of brushed metal"


def test_hf_folder_loads_by_its_card(hf_dir: Path, tmp_path: Path) -> None:
    ds = datasets.load_dataset(str(hf_dir), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "test"} and len(ds["test"]) == 9 and list(ds["test"].features) == \
           list(_load(hf_dir, "test", tmp_path / "cache").features)
    assert isinstance(ds["test"].features["image"], datasets.Image)


# -- COCO ------------------------------------------------------------------------------------------------------------
def test_coco_masks_decode_to_the_written_masks(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "instances.json"
    summary = export_coco(tree, out)
    coco = coco_api.COCO(str(out))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert sorted(names.values()) == ["bright_box", "dark_box", "twin_box"]
    assert len(coco.getImgIds()) == 2 + 6 + 3 and summary.annotations == len(coco.getAnnIds())
    for img in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        union = np.zeros((img["height"], img["width"]), dtype=bool)
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            assert not (union & m).any()  # components are disjoint
            union |= m
            assert names[a["category_id"]] == img["label"] and a["iscrowd"] == 0
            assert a["area"] == int(mask_utils.area(a["segmentation"])) == int(m.sum())
            assert a["bbox"] == [int(v) for v in mask_utils.toBbox(a["segmentation"])]
        path = tree / img["file_name"]
        assert Image.open(path).size == (img["width"], img["height"])
        mask_file = path.parent.parent.parent / "ground_truth" / img["label"] / path.name.replace(".png", "_mask.png")
        want = np.asarray(Image.open(mask_file)) > 0 if img["label"] != "good" else np.zeros_like(union)
        assert np.array_equal(union, want)
        if img["label"] == "twin_box":
            assert len(anns) == 2  # one annotation per connected component, not per mask


def test_components_are_eight_connected() -> None:
    m = np.zeros((6, 6), dtype=bool)
    m[1, 1] = m[2, 2] = True  # touch at a corner: one defect
    m[4, 4:6] = True
    assert [int(c.sum()) for c in _components(m)] == [2, 2]


# -- the command line and bad input ------------------------------------------------------------------------------------
def test_cli_exports_both_formats(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "--tree", str(tree / "metal"), "--format", "hf-datasets", "--out", str(tmp_path / "hf")]) == 0
    assert "exported 8 images (2 train, 6 test) as hf-datasets" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "hf" / "data").iterdir()) == ["test-00000-of-00001.parquet",
                                                                              "train-00000-of-00001.parquet"]
    assert main(["export", "--tree", str(tree), "--format", "coco", "--out", str(tmp_path / "c.json")]) == 0
    assert "as coco" in capsys.readouterr().out and json.loads((tmp_path / "c.json").read_text())["annotations"]


def _damaged(tree: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    shutil.copytree(tree / "metal", copy / "metal")
    return copy


def _fails(argv: list[str], capsys: pytest.CaptureFixture, *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err


@pytest.mark.parametrize("fmt,out", [("hf-datasets", "hf"), ("coco", "c.json")])
def test_bad_trees_are_one_line_naming_the_file_and_leave_nothing(tree: Path, tmp_path: Path, capsys, fmt: str,
                                                                   out: str) -> None:
    bad = _damaged(tree, tmp_path)
    dest = tmp_path / "exports" / out

    def leaves_nothing() -> None:
        left = sorted(p.name for p in dest.parent.iterdir()) if dest.parent.exists() else []
        assert left == [], left  # neither the output nor a temporary

    argv = ["export", "--tree", str(bad), "--format", fmt, "--out", str(dest)]
    _fails(["export", "--tree", str(tmp_path / "nope"), "--format", fmt, "--out", str(dest)], capsys, "--tree", "nope")
    _fails(["export", "--tree", str(tmp_path), "--format", fmt, "--out", str(dest)], capsys, "no manifest.jsonl")
    victim = next((bad / "metal" / "ground_truth").rglob("*_mask.png"))
    victim.unlink()  # a mask missing from the tree: found while rows are written
    _fails(argv, capsys, str(victim), "not found")
    leaves_nothing()
    victim.write_bytes(b"not a png")
    _fails(argv, capsys, str(victim), "not a PNG")
    leaves_nothing()
    manifest = bad / "metal" / MANIFEST
    good_manifest = manifest.read_text()
    manifest.write_text(good_manifest + "{torn\n")
    _fails(argv, capsys, str(manifest), "line 7", "not valid JSON")
    manifest.write_text(good_manifest.replace('"image":"test/', '"image":"../../test/', 1))
    _fails(argv, capsys, "points outside the tree")
    manifest.write_text(good_manifest)
    (bad / "metal" / JOURNAL).write_text("{}\n")
    _fails(argv, capsys, "unfinished")
    leaves_nothing()


def test_bad_outputs_are_refused_before_writing(tree: Path, tmp_path: Path, capsys) -> None:
    bad = _damaged(tree, tmp_path)
    _fails(["export", "--tree", str(bad), "--format", "hf-datasets", "--out", str(bad / "metal" / "hf")], capsys,
           "inside the tree")
    assert not (bad / "metal" / "hf").exists()
    full = tmp_path / "full"
    (full / "keep").mkdir(parents=True)
    _fails(["export", "--tree", str(bad), "--format", "hf-datasets", "--out", str(full)], capsys, "--out", "not empty")
    _fails(["export", "--tree", str(bad), "--format", "coco", "--out", str(full)], capsys, "--out", "a folder")
    old = tmp_path / "old.json"
    old.write_text("previous export")
    next((bad / "metal" / "test").rglob("*.png")).unlink()
    _fails(["export", "--tree", str(bad), "--format", "coco", "--out", str(old)], capsys, "not found")
    assert old.read_text() == "previous export"  # a failed export leaves the previous file whole
    with pytest.raises(SystemExit) as e:
        main(["export", "--tree", str(bad), "--format", "parquet", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_an_empty_existing_folder_is_filled(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    summary = export_hf(tree / "wood", out)
    assert summary.rows == {"test": 3} and (out / "data" / "test-00000-of-00001.parquet").is_file()
    assert "split: train" not in (out / "README.md").read_text()  # no normals copied: no train split
