"""The embedded procedural dataset: contract, determinism, labels, masks, captions, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoplug.data import open_dataset
from anoplug.data.base import DataError
from anoplug.data.toy import CATEGORIES, DEFAULT_LENGTH, ToyDataset, render, render_sample
from anoplug.types import GOOD

KINDS = {"texture", "object", "depth", "logical"}


def test_categories_cover_every_kind() -> None:
    assert {"fabric", "metal", "wood", "carpet", "tile", "capsule", "nut", "bottle", "surface3d", "tray"} <= set(CATEGORIES)
    assert {info["kind"] for info in CATEGORIES.values()} == KINDS
    assert "thread_break" in CATEGORIES["fabric"]["defects"] and "dent" in CATEGORIES["surface3d"]["defects"]
    assert set(CATEGORIES["tray"]["defects"]) == {"missing", "extra", "misplaced", "swapped"}


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_every_label_renders_with_contract(category: str) -> None:
    info = CATEGORIES[category]
    ds = ToyDataset(category, split="test", size=64, length=1 + len(info["defects"]))
    b = ds.all()
    assert b.image.shape == (len(ds), 3, 64, 64) and b.image.dtype == torch.float32
    assert b.label == [GOOD, *info["defects"]]
    assert b.text is not None and all(isinstance(t, str) and len(t) > 10 for t in b.text)
    assert (b.object_mask is not None) == (info["kind"] in ("object", "logical"))
    assert (b.depth is not None) == (info["kind"] == "depth")
    assert float(b.mask[0].sum()) == 0  # the good one
    for k, label in enumerate(b.label[1:], start=1):
        area = float(b.mask[k].mean())
        assert 0.0005 < area < 0.2, (category, label, area)  # a defect, not the whole image
        assert b.text[k] != b.text[0] and info["material"] in b.text[k]
    assert [m["source"] for m in b.meta] == [f"toy:{category}/test/{i}" for i in range(len(ds))]
    # exactly representable as 8-bit, so a PNG round trip is lossless
    assert torch.equal((b.image * 255).round() / 255, b.image)


def test_train_is_all_good_and_test_mixes() -> None:
    train = ToyDataset("wood", split="train")
    assert len(train) == DEFAULT_LENGTH["train"] and {train.label(i) for i in range(len(train))} == {GOOD}
    test = ToyDataset("wood", split="test")
    labels = [test.label(i) for i in range(len(test))]
    assert len(test) == DEFAULT_LENGTH["test"] and set(labels) == {GOOD, *CATEGORIES["wood"]["defects"]}
    sub = ToyDataset("wood", split="test", defects=["crack"], length=4)
    assert [sub.label(i) for i in range(4)] == [GOOD, "crack", GOOD, "crack"]


def test_deterministic_and_varied() -> None:
    a = render("metal", "test", 1, seed=0, size=48)
    b = render("metal", "test", 1, seed=0, size=48)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.text == b.text
    assert not torch.equal(a.image, render("metal", "test", 1, seed=1, size=48).image)
    assert not torch.equal(a.image, render("metal", "test", 2, seed=0, size=48).image)
    assert not torch.equal(render("metal", "train", 1, size=48).image, render("metal", "test", 1, size=48).image)
    ds = ToyDataset("nut", split="test", size=32)
    assert torch.equal(ds.batch([3, 1]).image[1], ds.batch([1]).image[0])  # batch composition does not matter


@pytest.mark.parametrize("size", [16, 37, 96])
def test_any_square_size(size: int) -> None:
    b = ToyDataset("tray", split="test", size=size, length=2).all()
    assert b.image.shape == (2, 3, size, size) and b.object_mask.shape == (2, 1, size, size)


def test_object_defects_lie_on_the_object() -> None:
    for cat in ("capsule", "nut"):
        b = ToyDataset(cat, split="test", size=96, length=5).all()
        for k in range(1, 5):
            inside = float((b.mask[k] * b.object_mask[k]).sum() / b.mask[k].sum())
            assert inside > 0.8, (cat, b.label[k], inside)


def test_dent_is_in_the_depth_map() -> None:
    good = render_sample("surface3d", "test", 0, size=96, label=GOOD)
    dent = render_sample("surface3d", "test", 0, size=96, label="dent")
    changed = np.abs(dent.depth - good.depth) > 0.01  # 1 % of the depth range
    assert dent.mask.sum() > 0 and changed.any()
    assert (changed & (dent.mask > 0)).sum() / changed.sum() > 0.9
    assert (dent.depth[dent.mask > 0] >= good.depth[dent.mask > 0] - 1e-6).all()  # pushed away from the camera


def test_tray_missing_part_empties_its_slot() -> None:
    good = render_sample("tray", "test", 0, size=64, label=GOOD)
    miss = render_sample("tray", "test", 0, size=64, label="missing")
    assert miss.object_mask.sum() < good.object_mask.sum()
    assert (miss.object_mask * miss.mask).sum() < 0.1 * miss.mask.sum()  # marked where the part should be


def test_open_dataset_scheme() -> None:
    ds = open_dataset("toy:capsule", split="test", size=32)
    assert isinstance(ds, ToyDataset) and ds.category == "capsule" and ds.split == "test" and ds.size == 32


@pytest.mark.parametrize("kw, match", [
    ({"category": "marble"}, "unknown toy category 'marble'"),
    ({"category": "metal", "split": "val"}, "unknown split"),
    ({"category": "metal", "size": 8}, "size"),
    ({"category": "metal", "defects": ["dent"]}, "dent"),
    ({"category": "metal", "length": 0}, "length"),
])
def test_bad_input_is_named(kw: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        ToyDataset(**kw)


def test_index_and_label_errors() -> None:
    with pytest.raises(IndexError):
        ToyDataset("metal", length=3).batch([3])
    with pytest.raises(DataError, match="no defect 'dent'"):
        render("metal", "test", 0, label="dent")
    with pytest.raises(DataError, match="unknown data source"):
        open_dataset("toys:metal")


def test_sample_sheet_tool_builds_a_grid() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "make_sample_sheet.py"
    spec = importlib.util.spec_from_file_location("make_sample_sheet", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sheet = mod.make_sheet(size=32, tile=24)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3
    assert sheet.shape[0] > len(CATEGORIES) * 24 and sheet.shape[1] > 6 * 24
