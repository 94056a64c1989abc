"""The bad-input matrix of image files (docs/image_input.md): each case a checked value or a clear error.

Every case writes one small file and reads it through :func:`anoplug.types.load_image`, the one reader
every loader, texture folder and ``Batch.from_paths`` uses. A conversion is checked by value (the
rounding each row states); an error must be a ``BatchError`` naming the file. The loader tests then
check that a bad file in a ``folder:`` dataset gives one ``DataError`` naming it, and that linked
folders and files cannot double a split (issue 13, item 6).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from anoplug.data import DataError, open_dataset
from anoplug.data.folder import FolderDataset
from anoplug.data.mvtec import MVTec3D, MVTecAD
from anoplug.data.visa import VisA
from anoplug.types import Batch, BatchError, load_image

DOC = Path(__file__).resolve().parents[1] / "docs" / "image_input.md"


# -- writers -------------------------------------------------------------------------------------------------------
def _png(path: Path, w: int, h: int, depth: int, ctype: int, rows: list[bytes], plte: bytes | None = None,
         trns: bytes | None = None) -> None:
    """A PNG by hand, for depths and colour types PIL cannot write (16-bit colour, 2-bit grey)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    s = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    if plte:
        s += chunk(b"PLTE", plte)
    if trns:
        s += chunk(b"tRNS", trns)
    s += chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r for r in rows))) + chunk(b"IEND", b"")
    path.write_bytes(s)


def _save(a: np.ndarray, mode: str | None = None, ext: str = ".png"):
    def write(p: Path) -> Path:
        p = p.with_suffix(ext)
        (Image.fromarray(a, mode) if mode else Image.fromarray(a)).save(p)
        return p
    return write


def _tiff(a: np.ndarray, **kw):
    def write(p: Path) -> Path:
        p = p.with_suffix(".tif")
        tifffile.imwrite(p, a, **kw)
        return p
    return write


def _raw_png(w, h, depth, ctype, rows, **kw):
    def write(p: Path) -> Path:
        p = p.with_suffix(".png")
        _png(p, w, h, depth, ctype, rows, **kw)
        return p
    return write


def _bytes(data: bytes, ext: str = ".png"):
    def write(p: Path) -> Path:
        p = p.with_suffix(ext)
        p.write_bytes(data)
        return p
    return write


def _truncated(p: Path) -> Path:
    p = p.with_suffix(".png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _bomb(w: int, h: int):
    """A PNG whose header claims w x h pixels, with (almost) no data: the size is known before decoding."""
    return _raw_png(w, h, 1, 0, [])


def _palette(transparent: bool = False):
    def write(p: Path) -> Path:
        p = p.with_suffix(".png")
        im = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
        im.putpalette([10, 20, 30, 200, 100, 50, 0, 0, 255])
        im.save(p, **({"transparency": 1} if transparent else {}))
        return p
    return write


def _cmyk(p: Path) -> Path:
    p = p.with_suffix(".tif")
    Image.new("CMYK", (3, 2), (100, 50, 0, 20)).save(p)
    return p


def _lab(p: Path) -> Path:
    p = p.with_suffix(".tif")
    Image.new("LAB", (3, 2), (50, 128, 128)).save(p)
    return p


def _rgb(*px):
    return np.array(px, np.uint8).reshape(1, -1, 3)


def _grey(a):
    a = np.asarray(a, np.uint8)
    return np.repeat(a[..., None], 3, -1)


U16 = np.array([[0, 200, 255, 256], [4095, 32768, 257 * 100, 65535]], np.uint16)
U16_TO_8 = np.array([[0, 0, 0, 1], [15, 128, 100, 255]], np.uint8)  # v >> 8, the format's depth

# id -> (writer, expected RGB array | error regex)
IMAGE_CASES = {
    # bit depth -------------------------------------------------------------------------------------
    "1bit-png": (_save(np.array([[0, 1, 1]], bool)), _grey([[0, 255, 255]])),
    "1bit-bmp": (_save(np.array([[1, 0]], bool), None, ".bmp"), _grey([[255, 0]])),
    "2bit-grey-png": (_raw_png(4, 1, 2, 0, [bytes([0b00011011])]), _grey([[0, 85, 170, 255]])),
    "8bit-grey": (_save(np.array([[7, 200]], np.uint8), "L"), _grey([[7, 200]])),
    "8bit-rgb": (_save(_rgb((1, 2, 3), (250, 128, 0))), _rgb((1, 2, 3), (250, 128, 0))),
    "16bit-png-all-values": (_save(U16), _grey(U16_TO_8)),
    "16bit-png-values-under-256": (_save(np.full((2, 3), 200, np.uint16)), _grey(np.zeros((2, 3)))),
    "16bit-tiff-little-endian": (_tiff(U16), _grey(U16_TO_8)),
    "16bit-tiff-big-endian": (_tiff(U16.astype(">u2")), _grey(U16_TO_8)),
    "16bit-rgb-png": (_raw_png(2, 1, 16, 2, [struct.pack(">6H", 200, 25700, 65535, 32768, 0, 4095)]),
                      _rgb((0, 100, 255), (128, 0, 15))),
    "16bit-rgba-png": (_raw_png(1, 1, 16, 6, [struct.pack(">4H", 65535, 32768, 200, 0)]), _rgb((255, 128, 0))),
    "16bit-rgb-tiff": (_tiff(np.array([[[200, 25700, 65535]]], np.uint16), photometric="rgb"), _rgb((0, 100, 255))),
    "16bit-signed-tiff": (_tiff(np.array([[-5, 7]], np.int16)), r"16-bit signed integer"),
    "32bit-signed-tiff": (_tiff(np.array([[1, 7]], np.int32)), r"32-bit signed integer"),
    "32bit-unsigned-tiff": (_tiff(np.array([[1, 7]], np.uint32)), r"32-bit unsigned integer"),
    # float ------------------------------------------------------------------------------------------
    "float32-tiff-unit-range": (_tiff(np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)), _grey([[0, 64, 128, 255]])),
    "float32-tiff-unit-noise": (_tiff(np.array([[-1e-7, 1.0000001]], np.float32)), _grey([[0, 255]])),
    "float32-tiff-255-range": (_tiff(np.array([[0.0, 100.4, 127.5, 255.0]], np.float32)), _grey([[0, 100, 128, 255]])),
    "float32-tiff-out-of-range": (_tiff(np.array([[-3.0, 1000.0]], np.float32)), r"values in \[-3, 1000\]"),
    "float32-tiff-nan": (_tiff(np.array([[np.nan, 0.5]], np.float32)), r"NaN or infinite"),
    "float64-tiff": (_tiff(np.array([[0.5, 1.0]], np.float64)), _grey([[128, 255]])),
    "float16-tiff": (_tiff(np.array([[0.5, 0.0]], np.float16)), _grey([[128, 0]])),
    "float32-rgb-tiff": (_tiff(np.array([[[0.5, 0.0, 1.0]]], np.float32), photometric="rgb"), _rgb((128, 0, 255))),
    "float32-rgb-planar-tiff": (_tiff(np.array([[[0.5]], [[0.0]], [[1.0]]], np.float32), photometric="rgb",
                                      planarconfig="separate"), _rgb((128, 0, 255))),
    "float64-miniswhite-tiff": (_tiff(np.zeros((1, 2)), photometric="miniswhite"), r"photometric interpretation 0"),
    # palette, CMYK, alpha ---------------------------------------------------------------------------
    "palette": (_palette(), np.array([[[10, 20, 30], [200, 100, 50]], [[0, 0, 255], [200, 100, 50]]], np.uint8)),
    "palette-transparency": (_palette(True),
                             np.array([[[10, 20, 30], [200, 100, 50]], [[0, 0, 255], [200, 100, 50]]], np.uint8)),
    "cmyk-tiff": (_cmyk, np.full((2, 3, 3), (143, 189, 235), np.uint8)),  # (255-C)(255-K)/255
    "LA": (_save(np.array([[[90, 0], [91, 255]]], np.uint8), "LA"), _grey([[90, 91]])),
    "RGBA": (_save(np.array([[[1, 2, 3, 0], [4, 5, 6, 255]]], np.uint8), "RGBA"), _rgb((1, 2, 3), (4, 5, 6))),
    "LAB-unsupported": (_lab, r"mode 'LAB'.*does not convert"),
    # broken files -----------------------------------------------------------------------------------
    "truncated-png": (_truncated, r"cannot read image .*truncated"),
    "zero-byte-png": (_bytes(b""), r"cannot read image .*empty \(0 bytes\)"),
    "text-renamed-png": (_bytes(b"hello, I am not a picture\n"), r"cannot read image .*not an image file"),
    "png-signature-garbage": (_bytes(b"\x89PNG\r\n\x1a\nnot really"), r"cannot read image"),
    "text-renamed-tiff": (_bytes(b"II*\0garbage", ".tif"), r"cannot read image .*neither PIL nor tifffile"),
    "decompression-bomb": (_bomb(100_000, 100_000), r"larger than PIL\.Image\.MAX_IMAGE_PIXELS"),
    "over-the-cap-under-twice": (_bomb(10_000, 10_000), r"larger than PIL\.Image\.MAX_IMAGE_PIXELS"),
    # sizes ------------------------------------------------------------------------------------------
    "tiny-1x1": (_save(_rgb((9, 8, 7))[:1, :1]), _rgb((9, 8, 7))),
    "tiny-2x3": (_save(np.arange(18, dtype=np.uint8).reshape(2, 3, 3)), np.arange(18, dtype=np.uint8).reshape(2, 3, 3)),
    "non-square-5x2": (_save(np.arange(30, dtype=np.uint8).reshape(5, 2, 3)), np.arange(30, dtype=np.uint8).reshape(5, 2, 3)),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_matrix(tmp_path, case, recwarn):
    write, expected = IMAGE_CASES[case]
    path = write(tmp_path / case)
    recwarn.clear()  # what writing the file warned about
    if isinstance(expected, str):
        with pytest.raises(BatchError, match=expected) as e:
            load_image(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)  # names the file, on one line
        with pytest.raises(BatchError, match=expected):  # the same refusal for grey reads
            load_image(path, "L")
        assert not recwarn.list, [str(w.message) for w in recwarn]  # one error, no warning besides it
        return
    got = load_image(path)
    assert got.dtype == np.uint8 and got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_array_equal(got, expected)
    grey = load_image(path, "L")  # grey is PIL's luminance of the RGB result
    np.testing.assert_array_equal(grey, np.asarray(Image.fromarray(expected).convert("L")))


def test_the_cap_is_an_error_not_a_warning(tmp_path, monkeypatch, recwarn):
    """Between 1x and 2x PIL's limit PIL only warns; here it is an error, with no warning left behind."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    p = tmp_path / "big.png"
    Image.new("L", (40, 40)).save(p)  # 1600 pixels: PIL alone would warn and read it
    with pytest.raises(BatchError, match=r"big\.png.*MAX_IMAGE_PIXELS"):
        load_image(p)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((40, 40), np.float64))  # the tifffile path has the same cap
    with pytest.raises(BatchError, match=r"big\.tif has 1600 pixels, more than the limit of 1000"):
        load_image(tmp_path / "big.tif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's own "no limit"
    assert load_image(p).shape == (40, 40, 3)


def test_missing_file_and_bad_mode(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    Image.new("L", (2, 2)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="mode must be one of"):
        load_image(tmp_path / "a.png", "CMYK")


# -- masks ---------------------------------------------------------------------------------------------------------
def _mask_rgba(p: Path) -> Path:
    p = p.with_suffix(".png")
    a = np.array([[[255, 255, 255, 0], [255, 255, 255, 255], [0, 0, 0, 255], [0, 0, 1, 9]]], np.uint8)
    Image.fromarray(a, "RGBA").save(p)
    return p


ON, OFF = 255, 0
MASK_CASES = {
    "8bit-grey": (_save(np.array([[0, 1, 255]], np.uint8), "L"), [[OFF, ON, ON]]),
    "1bit": (_save(np.array([[0, 1]], bool)), [[OFF, ON]]),
    "class-index-3": (_save(np.array([[0, 3]], np.uint8), "L"), [[OFF, ON]]),  # VisA's masks
    "16bit-values-0-1": (_save(np.array([[0, 1, 65535]], np.uint16)), [[OFF, ON, ON]]),  # >> 8 would lose the 1
    "32bit-int-tiff": (_tiff(np.array([[0, 1]], np.int32)), [[OFF, ON]]),
    "rgb-any-channel": (_save(_rgb((0, 0, 0), (0, 0, 1), (255, 0, 0))), [[OFF, ON, ON]]),  # luminance of (0,0,1) is 0
    "rgba-transparent-is-normal": (_mask_rgba, [[OFF, ON, OFF, ON]]),
    "palette-colour": (_palette(), [[ON, ON], [ON, ON]]),
    "palette-transparent-index": (_palette(True), [[ON, OFF], [ON, OFF]]),
    "float-tiff": (_tiff(np.array([[0.0, 0.3, 1.0]], np.float32)), [[OFF, ON, ON]]),
    "float-tiff-nan": (_tiff(np.array([[np.nan, 1.0]], np.float32)), r"mask .* NaN"),
    "16bit-rgb-tiff": (_tiff(np.array([[[0, 0, 0], [0, 1, 0]]], np.uint16), photometric="rgb"), [[OFF, ON]]),
    "16bit-rgb-png": (_raw_png(2, 1, 16, 2, [struct.pack(">6H", 0, 0, 0, 0, 1, 0)]), r"16-bit colour PNG"),
    "cmyk": (_cmyk, r"mode 'CMYK'"),
    "text-renamed": (_bytes(b"not a mask"), r"cannot read image"),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_mask_matrix(tmp_path, case):
    write, expected = MASK_CASES[case]
    path = write(tmp_path / case)
    if isinstance(expected, str):
        with pytest.raises(BatchError, match=expected) as e:
            load_image(path, "mask")
        assert str(path) in str(e.value)
        return
    got = load_image(path, "mask")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.array(expected, np.uint8))


@pytest.mark.parametrize("size", [None, 8])
def test_from_paths_mask_size_mismatch_is_an_error_before_resizing(tmp_path, size):
    """A 6x4 mask of a 5x4 image is refused even when ``size=`` would resize both to the same size."""
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.full((6, 4), 255, np.uint8)).save(tmp_path / "img_mask.png")
    with pytest.raises(BatchError, match=r"mask .*img_mask\.png is 4x6 but image .*img\.png is 4x5"):
        Batch.from_paths([tmp_path / "img.png"], [tmp_path / "img_mask.png"], size=size)


def test_from_paths_reads_by_the_table(tmp_path):
    """Non-square, 16-bit and float inputs through ``Batch.from_paths``: the values of the table, masks by rule."""
    tifffile.imwrite(tmp_path / "f.tif", np.full((3, 5), 0.5, np.float32))
    Image.fromarray(np.array([[0, 1, 0, 0, 2]] * 3, np.uint16)).save(tmp_path / "m.png")  # a 16-bit class mask
    b = Batch.from_paths([tmp_path / "f.tif"], [tmp_path / "m.png"])
    assert b.image.shape == (1, 3, 3, 5)
    assert (b.image * 255).round().unique().tolist() == [128.0]
    assert b.mask[0, 0, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]


# -- issue 13, item 6: the three reproductions --------------------------------------------------------------------
def test_issue13_item6_float_tiff_in_unit_range_is_not_black(tmp_path):
    """A float32 TIFF in [0, 1] came out all black (PIL's F -> L truncates); 0.5 must give 128."""
    tifffile.imwrite(tmp_path / "half.tif", np.full((4, 6), 0.5, np.float32))
    np.testing.assert_array_equal(load_image(tmp_path / "half.tif"), np.full((4, 6, 3), 128, np.uint8))
    root = tmp_path / "ds"
    (root / "normal").mkdir(parents=True)
    tifffile.imwrite(root / "normal" / "a.tif", np.full((8, 8), 0.5, np.float32))
    b = open_dataset(f"folder:{root}", size=8).all()
    assert (b.image * 255).round().unique().tolist() == [128.0]


def test_issue13_item6_16bit_png_is_scaled_by_its_depth_not_its_values(tmp_path):
    """A 16-bit PNG whose values stay <= 255 was not rescaled (bright): 200 came out as 200, not 200 >> 8 = 0.

    The rule depends on the file's depth only: the same stored 200 reads the same whether the file's
    maximum is 255 or 65535.
    """
    Image.fromarray(np.array([[0, 200, 255]], np.uint16)).save(tmp_path / "dim.png")
    Image.fromarray(np.array([[0, 200, 65535]], np.uint16)).save(tmp_path / "full.png")
    assert Image.open(tmp_path / "dim.png").mode == "I;16"  # really a 16-bit file
    np.testing.assert_array_equal(load_image(tmp_path / "dim.png"), _grey([[0, 0, 0]]))
    np.testing.assert_array_equal(load_image(tmp_path / "full.png"), _grey([[0, 0, 255]]))
    root = tmp_path / "ds"
    (root / "normal").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(root / "normal" / "a.png")
    assert float(open_dataset(f"folder:{root}", size=8).all().image.max()) == 0.0


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link, target_is_directory=target.is_dir())


def _w(path: Path, value: int, hw=(6, 5)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*hw, 3), value, np.uint8)).save(path)


def _m(path: Path, hw=(6, 5)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(hw, np.uint8)
    m[1:3, 1:3] = 255
    Image.fromarray(m).save(path)


@pytest.fixture
def mvtec(tmp_path):
    cat = tmp_path / "mvtec" / "widget"
    for i in range(3):
        _w(cat / "train" / "good" / f"{i:03d}.png", i)
    _w(cat / "test" / "good" / "000.png", 10)
    for i in range(2):
        _w(cat / "test" / "scratch" / f"{i:03d}.png", 20 + i)
        _m(cat / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return cat


def test_issue13_item6_symlinked_subfolders_do_not_double_the_splits(mvtec):
    """``train/good2 -> good`` doubled the train split, ``test/scratch2 -> scratch`` (with its masks) the test split."""
    assert len(MVTecAD(mvtec, split="train")) == 3 and len(MVTecAD(mvtec, split="test")) == 3
    _link(mvtec / "train" / "good2", Path("good"))
    with pytest.raises(DataError, match=r"train/good/000\.png and .*train/good2/000\.png are the same file"):
        MVTecAD(mvtec, split="train")
    _link(mvtec / "test" / "scratch2", Path("scratch"))
    _link(mvtec / "ground_truth" / "scratch2", Path("scratch"))
    with pytest.raises(DataError, match=r"test/scratch/000\.png and .*test/scratch2/000\.png are the same file"):
        MVTecAD(mvtec, split="test")


def test_issue13_item6_folder_layout_symlinks(tmp_path):
    root = tmp_path / "line"
    for i in range(2):
        _w(root / "normal" / f"n{i}.png", i)
    _w(root / "abnormal" / "dent" / "d0.png", 5)
    _m(root / "mask" / "dent" / "d0.png")
    assert len(FolderDataset(root, split="train")) == 2 and len(FolderDataset(root, split="test")) == 1
    _link(root / "abnormal" / "dent2", Path("dent"))
    _link(root / "mask" / "dent2", Path("dent"))
    with pytest.raises(DataError, match=r"abnormal/dent/d0\.png and .*abnormal/dent2/d0\.png are the same file"):
        FolderDataset(root, split="test")
    _link(root / "normal" / "n0_again.png", Path("n0.png"))  # a linked file
    with pytest.raises(DataError, match=r"normal/n0\.png and .*n0_again\.png are the same file"):
        FolderDataset(root, split="train")


@pytest.mark.parametrize("kind", ["broken-file", "file-loop", "dir-loop-to-parent", "dir-loop-to-itself",
                                  "mask-dir-loop"])
def test_broken_links_and_loops_are_errors(tmp_path, kind):
    root = tmp_path / "line"
    _w(root / "normal" / "n0.png", 1)
    _w(root / "abnormal" / "a0.png", 2)
    _m(root / "mask" / "a0.png")
    if kind == "broken-file":
        _link(root / "normal" / "gone.png", Path("nowhere.png"))
        split, needle = "train", r"gone\.png is a broken symbolic link"
    elif kind == "file-loop":
        _link(root / "normal" / "loop.png", Path("loop.png"))
        split, needle = "train", r"loop\.png is a symbolic link loop"
    elif kind == "dir-loop-to-parent":
        _link(root / "abnormal" / "up", Path(".."))
        split, needle = "test", r"abnormal/up is a symbolic link loop"
    elif kind == "dir-loop-to-itself":
        _link(root / "abnormal" / "self", Path("."))
        split, needle = "test", r"abnormal/self is a symbolic link loop"
    else:
        _link(root / "mask" / "again", Path("."))
        split, needle = "test", r"mask/again is a symbolic link loop"
    with pytest.raises(DataError, match=needle):
        FolderDataset(root, split=split)


def test_links_that_repeat_nothing_are_fine(tmp_path, mvtec):
    """A dataset assembled from folders elsewhere (each linked once) is read normally."""
    elsewhere = tmp_path / "store" / "good"
    _w(elsewhere / "000.png", 7)
    _w(elsewhere / "001.png", 8)
    import shutil

    shutil.rmtree(mvtec / "train" / "good")
    _link(mvtec / "train" / "good", elsewhere)
    ds = MVTecAD(mvtec, split="train")
    assert len(ds) == 2 and ds.all().meta[0]["source"] == "train/good/000.png"


def test_mvtec3d_and_visa_duplicates(tmp_path):
    cat = tmp_path / "m3d" / "bagel"
    _w(cat / "train" / "good" / "rgb" / "000.png", 1)
    (cat / "train" / "good" / "xyz").mkdir()
    tifffile.imwrite(cat / "train" / "good" / "xyz" / "000.tiff", np.zeros((6, 5, 3), np.float32), photometric="rgb")
    assert len(MVTec3D(cat, split="train")) == 1
    _link(cat / "train" / "good2", Path("good"))
    with pytest.raises(DataError, match=r"good/rgb/000\.png and .*good2/rgb/000\.png are the same file"):
        MVTec3D(cat, split="train")

    root = tmp_path / "VisA"
    _w(root / "candle" / "Data" / "Images" / "Normal" / "0000.JPG", 1)
    _link(root / "candle" / "Data" / "Images" / "Normal" / "0001.JPG", Path("0000.JPG"))
    (root / "split_csv").mkdir(parents=True)
    rows = ["object,split,label,image,mask", "candle,train,normal,candle/Data/Images/Normal/0000.JPG,"]
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows + rows[1:]) + "\n")  # a repeated row
    with pytest.raises(DataError, match=r"lines 2 and 3 both list .*0000\.JPG"):
        VisA.open(f"{root}/candle")
    rows.append("candle,train,normal,candle/Data/Images/Normal/0001.JPG,")  # a row reaching 0000 by a link
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"lines 2 and 3 both list .*0001\.JPG"):
        VisA.open(f"{root}/candle")


# -- through a loader: one bad file, one clear error -----------------------------------------------------------
@pytest.mark.parametrize("bad", ["truncated-png", "zero-byte-png", "text-renamed-png", "decompression-bomb",
                                 "float32-tiff-out-of-range", "32bit-signed-tiff"])
def test_a_bad_file_in_a_folder_dataset_is_one_error_naming_it(tmp_path, bad):
    root = tmp_path / "plant"
    for i in range(3):
        _w(root / "normal" / f"n{i}.png", i)
    write, _ = IMAGE_CASES[bad]
    path = write(root / "normal" / "n1_bad")
    ds = open_dataset(f"folder:{root}", split="train", size=8)
    assert len(ds) == 4
    k = [r.image for r in ds.records].index(path)
    ds.batch([i for i in range(4) if i != k])  # the good files still read
    with pytest.raises(DataError) as e:
        ds.all()
    assert str(path) in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_bad_file_through_the_cli_exits_2_with_one_line(tmp_path, capsys):
    from anoplug.cli import main

    root = tmp_path / "plant"
    for i in range(2):
        _w(root / "normal" / f"n{i}.png", i, hw=(16, 16))
    (root / "normal" / "n2.png").write_bytes(b"")
    code = main(["generate", "draem", "--data", f"folder:{root}", "-n", "3", "--size", "16",
                 "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "n2.png" in lines[0] and "empty" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*")), "a failed run left files in --out"


def test_the_doc_states_every_rule_the_tests_check():
    text = DOC.read_text()
    for needle in ("v16 >> 8", "half to even", "0.5 → 127.5 → **128**", "MAX_IMAGE_PIXELS", "89,478,485",
                   "alpha **dropped**", "CMYK", "I;16", "`I`", "`F`", "fully transparent", "realpath",
                   "do not keep the aspect ratio", "EXIF"):
        assert needle in text, needle
    import anoplug.data.folder
    import anoplug.types

    assert "docs/image_input.md" in anoplug.types.__doc__ and "docs/image_input.md" in anoplug.data.folder.__doc__


def test_a_record_list_repeating_an_image_is_refused(tmp_path):
    from anoplug.data.folder import FileDataset, FileRecord

    _w(tmp_path / "a.png", 1)
    rec = FileRecord(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"a\.png is listed twice in the train split"):
        FileDataset([rec, rec], category="x", split="train", size=8)
