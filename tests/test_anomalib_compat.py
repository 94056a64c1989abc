"""anomalib reads what ``write_generated`` writes, unchanged (its MVTec AD and Folder datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anoplug.data.toy import ToyDataset
from anoplug.data.writer import write_generated
from tests.test_writer import BoxGenerator

anomalib_datasets = pytest.importorskip("anomalib.data.datasets", reason="anomalib is in the dev extra")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("generated")
    s = write_generated(BoxGenerator(), ToyDataset("metal", size=32, length=10), out, n=24, seed=2, batch_size=8,
                        n_train=6, progress=False)
    recs = [json.loads(line) for line in s.manifest.read_text().splitlines()]
    assert {"good", "dark_box", "bright_box"} <= {r["label"] for r in recs}
    return out, recs


def _check_items(ds, tree_root: Path, recs: list[dict]) -> None:
    by_image = {str((tree_root / r["image"]).resolve()): r for r in recs}
    seen = 0
    for k in range(len(ds)):
        item = ds[k]
        path = str(Path(item.image_path).resolve())
        if path not in by_image:
            continue
        rec = by_image[path]
        seen += 1
        assert int(item.gt_label) == (rec["label"] != "good")
        mask = np.asarray(item.gt_mask).reshape(32, 32) > 0
        if rec["mask"] is None:
            assert not mask.any()
        else:
            ours = np.asarray(Image.open(tree_root / rec["mask"])) > 0
            assert np.array_equal(mask, ours)
    assert seen == len(recs)


def test_mvtec_dataset_reads_the_tree(tree: tuple[Path, list[dict]]) -> None:
    out, recs = tree
    test = anomalib_datasets.MVTecADDataset(root=out, category="metal", split="test")
    train = anomalib_datasets.MVTecADDataset(root=out, category="metal", split="train")
    assert len(train) == 6 and len(test) == len(recs)
    df = test.samples
    counts = df.groupby("label").size().to_dict()
    assert counts == {lab: sum(r["label"] == lab for r in recs) for lab in {r["label"] for r in recs}}
    assert (df.label_index == (df.label != "good")).all()
    _check_items(test, out / "metal", recs)


def test_folder_dataset_reads_the_tree(tree: tuple[Path, list[dict]]) -> None:
    out, recs = tree
    root = out / "metal"
    defects = sorted({r["label"] for r in recs} - {"good"})
    ds = anomalib_datasets.FolderDataset(
        name="metal", root=root, normal_dir="train/good", normal_test_dir="test/good",
        abnormal_dir=[f"test/{d}" for d in defects], mask_dir=[f"ground_truth/{d}" for d in defects], split="test")
    assert len(ds) == len(recs)
    assert int((ds.samples.label_index == 1).sum()) == sum(r["label"] != "good" for r in recs)
    _check_items(ds, root, recs)
