"""Loaders for MVTec AD / LOCO / 3D-AD, VisA and plain folders, on tiny trees built here (no real data)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from anoplug.data import DataError, open_dataset
from anoplug.data.folder import FolderDataset
from anoplug.data.mvtec import MVTec3D, MVTecAD, MVTecLOCO
from anoplug.data.visa import VisA

H, W = 24, 20  # deliberately not square: loaders resize to size x size


def _img(path, value: int, mode: str = "RGB", hw=(H, W)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    if mode == "I;16":
        a = (rng.integers(0, 65536, hw)).astype(np.uint16)
        Image.fromarray(a).save(path)
        return a
    ch = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = rng.integers(0, 256, (*hw, ch), dtype=np.uint8)
    a = a[..., 0] if ch == 1 else a
    Image.fromarray(a, mode).save(path)
    return a


def _mask(path, box=(4, 10, 5, 12), hw=(H, W), value: int = 255) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(hw, np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = value
    Image.fromarray(m).save(path)
    return m


@pytest.fixture
def mvtec_tree(tmp_path):
    cat = tmp_path / "mvtec" / "widget"
    for i in range(3):
        _img(cat / "train" / "good" / f"{i:03d}.png", i)
    _img(cat / "test" / "good" / "000.png", 10)
    for i in range(2):
        _img(cat / "test" / "scratch" / f"{i:03d}.png", 20 + i)
        _mask(cat / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    _img(cat / "test" / "hole" / "000.png", 30)
    _mask(cat / "ground_truth" / "hole" / "000_mask.png", box=(0, 3, 0, 3))
    return cat


# -- MVTec AD -----------------------------------------------------------------------------------------------
def test_mvtec_train_and_test(mvtec_tree):
    train = open_dataset(f"mvtec:{mvtec_tree}", split="train", size=16)
    assert isinstance(train, MVTecAD) and len(train) == 3 and train.category == "widget"
    b = train.all()
    assert b.image.shape == (3, 3, 16, 16) and b.label == ["good"] * 3 and float(b.mask.sum()) == 0
    assert b.meta[0]["source"] == "train/good/000.png"
    test = MVTecAD(mvtec_tree, split="test", size=16)
    assert sorted(test.labels) == ["good", "hole", "scratch", "scratch"]
    tb = test.all()
    for lab, m in zip(tb.label, tb.mask):
        assert (float(m.sum()) > 0) == (lab != "good")


def test_mvtec_pixels_and_mask_alignment(mvtec_tree):
    """At native size nothing is resampled: image bytes and mask box come back exactly."""
    ds = MVTecAD(mvtec_tree, split="test", size=H)  # H != W, so this still resizes width only
    i = ds.labels.index("hole")
    b = ds.batch([i])
    m = b.mask[0, 0].numpy()
    ys, xs = np.nonzero(m)
    assert ys.max() < 3 and xs.max() < 4 and m.sum() > 0  # the 3x3 box, widened by 24/20 in x
    native = MVTecAD(mvtec_tree, split="train", size=H)
    src = np.asarray(Image.open(mvtec_tree / "train/good/000.png").resize((H, H), Image.BILINEAR))
    np.testing.assert_array_equal((native.batch([0]).image[0].permute(1, 2, 0).numpy() * 255).round(), src)


def test_mvtec_missing_mask_names_the_image(mvtec_tree):
    (mvtec_tree / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"scratch/001\.png"):
        MVTecAD(mvtec_tree, split="test")


def test_mvtec_orphan_mask_names_the_mask(mvtec_tree):
    _mask(mvtec_tree / "ground_truth" / "scratch" / "007_mask.png")
    with pytest.raises(DataError, match=r"007_mask\.png matches no image"):
        MVTecAD(mvtec_tree, split="test")


def test_mvtec_missing_folders(tmp_path, mvtec_tree):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(f"mvtec:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="no test/ folder"):
        (tmp_path / "empty").mkdir()
        MVTecAD(tmp_path / "empty", split="test")
    with pytest.raises(DataError, match="unknown split"):
        MVTecAD(mvtec_tree, split="validation")


def test_mvtec_mask_size_mismatch(mvtec_tree):
    _mask(mvtec_tree / "ground_truth" / "hole" / "000_mask.png", hw=(H + 2, W))
    ds = MVTecAD(mvtec_tree, split="test", size=16)
    with pytest.raises(DataError, match=r"000_mask\.png is 20x26 but its image .*hole/000\.png is 20x24"):
        ds.batch([ds.labels.index("hole")])


def test_truncated_and_unreadable_files_are_named(mvtec_tree):
    p = mvtec_tree / "train" / "good" / "001.png"
    p.write_bytes(p.read_bytes()[:60])  # truncated PNG
    (mvtec_tree / "train" / "good" / "002.png").write_bytes(b"not an image at all")
    ds = MVTecAD(mvtec_tree, split="train", size=16)
    ds.batch([0])
    with pytest.raises(DataError, match=r"001\.png"):
        ds.batch([1])
    with pytest.raises(DataError, match=r"002\.png"):
        ds.batch([2])


def test_gray_rgba_16bit_are_converted(tmp_path):
    """Documented conversions: gray -> RGB, RGBA -> RGB (alpha dropped), 16-bit -> 8-bit by the high byte."""
    cat = tmp_path / "conv"
    gray = _img(cat / "train" / "good" / "a_gray.png", 1, "L")
    rgba = _img(cat / "train" / "good" / "b_rgba.png", 2, "RGBA")
    deep = _img(cat / "train" / "good" / "c_16bit.png", 3, "I;16")
    b = MVTecAD(cat, split="train", size=W).all()  # width already matches; height resized
    assert b.image.shape == (3, 3, W, W)
    from anoplug.data.folder import _read_rgb  # the reader before resizing, to compare exact bytes

    a, _ = _read_rgb(cat / "train" / "good" / "a_gray.png")
    np.testing.assert_array_equal(a, np.repeat(gray[..., None], 3, -1))
    a, _ = _read_rgb(cat / "train" / "good" / "b_rgba.png")
    np.testing.assert_array_equal(a, rgba[..., :3])
    a, _ = _read_rgb(cat / "train" / "good" / "c_16bit.png")
    np.testing.assert_array_equal(a[..., 0], (deep >> 8).astype(np.uint8))  # docs/image_input.md


# -- MVTec LOCO ------------------------------------------------------------------------------------------------
@pytest.fixture
def loco_tree(tmp_path):
    cat = tmp_path / "loco" / "boxes"
    for split in ("train", "validation"):
        _img(cat / split / "good" / "000.png", 1)
    _img(cat / "test" / "good" / "000.png", 2)
    _img(cat / "test" / "logical_anomalies" / "000.png", 3)
    _mask(cat / "ground_truth" / "logical_anomalies" / "000" / "000.png", box=(0, 4, 0, 4))
    _mask(cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", box=(18, 24, 14, 20))
    _img(cat / "test" / "structural_anomalies" / "000.png", 4)
    _mask(cat / "ground_truth" / "structural_anomalies" / "000" / "000.png")
    return cat


def test_loco_merges_mask_folders(loco_tree):
    ds = open_dataset(f"mvtec-loco:{loco_tree}", split="test", size=H)
    assert isinstance(ds, MVTecLOCO)
    assert sorted(ds.labels) == ["good", "logical_anomalies", "structural_anomalies"]
    m = ds.batch([ds.labels.index("logical_anomalies")]).mask[0, 0].numpy()
    assert m[:4].sum() > 0 and m[18:].sum() > 0 and m[8:14].sum() == 0  # both regions, nothing between
    assert len(MVTecLOCO(loco_tree, split="validation")) == 1


def test_loco_missing_mask_folder(loco_tree):
    import shutil

    shutil.rmtree(loco_tree / "ground_truth" / "structural_anomalies" / "000")
    with pytest.raises(DataError, match=r"structural_anomalies/000\.png"):
        MVTecLOCO(loco_tree, split="test")


# -- MVTec 3D-AD -------------------------------------------------------------------------------------------------
def _xyz(path, z: float, hw=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float32)
    xyz = np.stack([xx, yy, np.full(hw, z, np.float32) + 0.01 * xx], -1)
    xyz[0, 0] = np.nan  # sensor gap
    tifffile.imwrite(path, xyz, photometric="rgb")
    return xyz


@pytest.fixture
def mvtec3d_tree(tmp_path):
    cat = tmp_path / "m3d" / "bagel"
    _img(cat / "train" / "good" / "rgb" / "000.png", 1)
    _xyz(cat / "train" / "good" / "xyz" / "000.tiff", 0.5)
    _img(cat / "test" / "crack" / "rgb" / "000.png", 2)
    _xyz(cat / "test" / "crack" / "xyz" / "000.tiff", 0.7)
    _mask(cat / "test" / "crack" / "gt" / "000.png")
    _img(cat / "test" / "good" / "rgb" / "000.png", 3)
    _xyz(cat / "test" / "good" / "xyz" / "000.tiff", 0.6)
    _mask(cat / "test" / "good" / "gt" / "000.png", value=0)
    return cat


def test_mvtec3d_depth_is_z(mvtec3d_tree):
    ds = open_dataset(f"mvtec-3d:{mvtec3d_tree}", split="test", size=W)
    assert isinstance(ds, MVTec3D)
    b = ds.all()
    assert b.depth is not None and b.depth.shape == (2, 1, W, W)
    k = b.label.index("crack")
    d = b.depth[k, 0].numpy()
    assert d[0, 0] == 0.0  # NaN (no data) becomes 0
    np.testing.assert_allclose(d[5, :], 0.7 + 0.01 * np.arange(W), atol=1e-6)
    assert float(b.mask[k].sum()) > 0 and float(b.mask[1 - k].sum()) == 0


def test_mvtec3d_bad_inputs(mvtec3d_tree):
    (mvtec3d_tree / "test" / "crack" / "xyz" / "000.tiff").unlink()
    with pytest.raises(DataError, match=r"no xyz point cloud for .*crack/rgb/000\.png"):
        MVTec3D(mvtec3d_tree, split="test")
    tifffile.imwrite(mvtec3d_tree / "train" / "good" / "xyz" / "000.tiff", np.zeros((H, W), np.float32))
    ds = MVTec3D(mvtec3d_tree, split="train")
    with pytest.raises(DataError, match=r"must be H x W x 3"):
        ds.batch([0])


# -- VisA ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def visa_root(tmp_path):
    root = tmp_path / "VisA"
    lines = ["object,split,label,image,mask"]
    for i in range(3):
        _img(root / "candle" / "Data" / "Images" / "Normal" / f"{i:04d}.JPG", i)
        lines.append(f"candle,{'train' if i < 2 else 'test'},normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    for i in range(2):
        _img(root / "candle" / "Data" / "Images" / "Anomaly" / f"{i:03d}.JPG", 10 + i)
        _mask(root / "candle" / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png", value=3)  # class index, not 255
        lines.append(f"candle,test,anomaly,candle/Data/Images/Anomaly/{i:03d}.JPG,candle/Data/Masks/Anomaly/{i:03d}.png")
    _img(root / "pcb1" / "Data" / "Images" / "Normal" / "0000.JPG", 40)
    lines.append("pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    return root


def test_visa_split_csv(visa_root):
    train = open_dataset(f"visa:{visa_root}/candle", split="train", size=16)
    assert isinstance(train, VisA) and len(train) == 2 and train.category == "candle"
    test = VisA.open(f"{visa_root}/candle", split="test", size=16)
    assert sorted(test.labels) == ["bad", "bad", "good"]
    b = test.all()
    for lab, m in zip(b.label, b.mask):
        assert (float(m.sum()) > 0) == (lab == "bad")  # class-index masks binarised
    assert len(VisA.open(f"{visa_root}/pcb1", split="train")) == 1


def test_visa_bad_inputs(visa_root, tmp_path):
    with pytest.raises(DataError, match=r"no category 'nope'.*candle, pcb1"):
        VisA.open(f"{visa_root}/nope")
    with pytest.raises(DataError, match=r"split_csv/1cls\.csv not found"):
        VisA.open(f"{tmp_path}/candle")
    (visa_root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DataError, match=r"line \d+: mask .*001\.png of image .*001\.JPG not found"):
        VisA.open(f"{visa_root}/candle", split="test")
    (visa_root / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,train,x.png\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) label, mask"):
        VisA.open(f"{visa_root}/candle")


# -- folder ------------------------------------------------------------------------------------------------------
@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "line_scan"
    for i in range(3):
        _img(root / "normal" / f"n{i}.png", i)
    _img(root / "normal_test" / "t0.png", 9)
    _img(root / "abnormal" / "a0.png", 10)
    _mask(root / "mask" / "a0.png")
    _img(root / "abnormal" / "dent" / "d0.png", 11)
    _mask(root / "mask" / "dent" / "d0_mask.png")
    return root


def test_folder_layout(folder_root):
    train = open_dataset(f"folder:{folder_root}", split="train", size=16)
    assert isinstance(train, FolderDataset) and len(train) == 3 and train.category == "line_scan"
    test = FolderDataset(folder_root, split="test", size=16)
    assert test.labels == ["good", "anomaly", "dent"]
    b = test.all()
    assert [float(m.sum()) > 0 for m in b.mask] == [False, True, True]


def test_folder_bad_inputs(folder_root, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="no normal-image folder"):
        FolderDataset(tmp_path / "bare")
    _img(folder_root / "abnormal" / "a1.png", 12)
    with pytest.raises(DataError, match=r"no mask for anomalous image .*a1\.png"):
        FolderDataset(folder_root, split="test")
    (folder_root / "abnormal" / "a1.png").unlink()
    _mask(folder_root / "mask" / "zz.png")
    with pytest.raises(DataError, match=r"mask .*zz\.png matches no image"):
        FolderDataset(folder_root, split="test")


def test_unknown_scheme_is_clear():
    with pytest.raises(DataError, match="unknown data source 'ftp:x'"):
        open_dataset("ftp:x")


# -- anoplug reads what it writes ------------------------------------------------------------------------------
def test_mvtec_loader_reads_the_writer_output(folder_root, tmp_path):
    """The writer's tree is an MVTec AD category: the mvtec loader returns its samples, labels and masks."""
    import json

    import torch
    from pydantic import Field

    from anoplug.data.writer import write_generated
    from anoplug.generator import Generator
    from anoplug.params import Params

    class SquareParams(Params):
        side: int = Field(4, ge=1, le=16, description="side of the painted square in pixels")

    class Square(Generator):
        name, version, Params = "square", "0.0.1", SquareParams

        def sample(self, batch, rngs):
            return [{"y": int(torch.randint(0, 8, (1,), generator=g)), "good": bool(torch.rand(1, generator=g) < 0.3)}
                    for g in rngs]

        def apply(self, batch, samples, **conditions):
            out = batch.clone()
            k = self.params.side
            for i, s in enumerate(samples):
                if not s["good"]:
                    out.image[i, :, s["y"]:s["y"] + k, 2:2 + k] = 1.0
                    out.mask[i, :, s["y"]:s["y"] + k, 2:2 + k] = 1.0
                    out.label[i] = "square"
            return out

    source = FolderDataset(folder_root, split="train", size=16)
    summary = write_generated(Square(), source, tmp_path / "out", n=7, seed=3, batch_size=3, progress=False)
    records = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    assert {r["label"] for r in records} == {"good", "square"}  # both kinds of sample are exercised
    test = MVTecAD(summary.root, split="test", size=16)
    assert len(test) == 7 and sorted(test.labels) == sorted(r["label"] for r in records)
    b = test.all()
    by_name = {m["source"]: k for k, m in enumerate(b.meta)}
    for r in records:
        k = by_name[r["image"]]
        assert b.label[k] == r["label"]
        assert (float(b.mask[k].sum()) == 16.0) == (r["label"] == "square")  # exactly the 4x4 square
    assert len(MVTecAD(summary.root, split="train", size=16)) == len(source)
