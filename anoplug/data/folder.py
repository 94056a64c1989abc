"""Datasets read from image files on disk: the shared file reader and the plain folder layout.

``folder:PATH`` follows anomalib's Folder convention::

    PATH/normal/*.png            normal images (train split; also accepted: good/)
    PATH/abnormal/*.png          anomalous images (test split; also: anomaly/, defect/); a sub-folder
                                 abnormal/<type>/ gives the label <type>, files directly in it get "anomaly"
    PATH/mask/*.png              one mask per anomalous image (also: masks/, ground_truth/), named like
                                 the image, or <stem>_mask.<ext>, mirroring any <type>/ sub-folder
    PATH/normal_test/*.png       optional normal images for the test split (also: test_good/)

Conversions (documented, not silent) are those of :func:`anoplug.types.load_image`, tabled in
``docs/image_input.md``: grey, palette, CMYK and alpha images become RGB (alpha dropped), 16-bit images
keep their high byte (by the format's depth, not the values), float TIFFs in [0, 1] are scaled by 255
and in [0, 255] kept, anything else is refused; every image is resized to ``size`` x ``size`` (bilinear;
masks nearest, *without* keeping the aspect ratio) and a mask pixel is anomalous when any channel of its
stored value is non-zero. A mask whose size differs from its image, a missing mask, a mask without an
image, an unreadable, truncated, refused or oversized file raises :class:`~anoplug.data.base.DataError`
naming the file.

Links: folders and files may be symbolic links, but every loader refuses (a ``DataError`` naming both
paths) an image reached twice in one split -- a linked sub-folder repeating another, a linked file, a
duplicated csv row -- instead of silently doubling the split; a broken link or a link loop is an error
too. Only the folders of the layout are read, one level deep (``normal/`` is flat).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anoplug.data.base import DataError, Dataset
from anoplug.types import GOOD, Batch, BatchError, load_image

__all__ = ["FileDataset", "FileRecord", "FolderDataset", "IMAGE_EXTENSIONS", "check_unique", "list_images",
           "list_subdirs"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _unreachable(p: Path) -> str | None:
    """Why the symbolic link ``p`` leads nowhere (a loop, a missing target), or None when it is not such a link."""
    if not p.is_symlink():
        return None
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"a broken symbolic link (to {os.readlink(p)}, which does not exist)"
    if p.is_dir():
        real, parent = p.resolve(), p.parent.resolve()
        if real == parent or real in parent.parents:
            return f"a symbolic link loop (to {real}, a folder that contains it)"
    return None


def _entries(directory: Path, wanted: Callable[[Path], bool], what: str) -> list[Path]:
    """Entries of ``directory`` that ``wanted`` keeps, sorted (hidden ones skipped); a broken or looping link is refused."""
    out = []
    for p in directory.iterdir():
        if p.name.startswith(".") or not wanted(p):
            continue
        why = _unreachable(p)
        if why is not None:
            raise DataError(f"{what}{p} is {why}")
        out.append(p)
    return sorted(out)


def list_images(directory: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly in ``directory``, sorted by name (hidden files skipped).

    A broken symbolic link or a link loop with an image extension is a DataError, not a skipped file.
    """
    images = _entries(directory, lambda p: p.suffix.lower() in extensions, "image ")
    return [p for p in images if p.is_file()]


def list_subdirs(directory: Path) -> list[Path]:
    """Sub-folders directly in ``directory``, sorted (hidden ones skipped); a broken or looping link is a DataError."""
    return [p for p in _entries(directory, lambda p: True, "") if p.is_dir()]


def check_unique(records: Sequence[FileRecord], split: str) -> None:
    """Refuse an image file reached twice in one split (through a linked file or folder, or a repeated row)."""
    seen: dict[str, Path] = {}
    for r in records:
        real = os.path.realpath(r.image)
        first = seen.get(real)
        if first is None:
            seen[real] = r.image
        elif first == r.image:
            raise DataError(f"image {first} is listed twice in the {split} split; remove the repeated entry")
        else:
            raise DataError(f"{first} and {r.image} are the same file ({real}): a symbolic link to a file or a "
                            f"folder lists it twice in the {split} split; remove the link (or copy the file on purpose)")


@dataclass(frozen=True)
class FileRecord:
    """One sample on disk: its image, zero or more mask files (merged), its label, optional xyz depth file."""

    image: Path
    label: str = GOOD
    masks: tuple[Path, ...] = ()
    depth: Path | None = None


def _read_rgb(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        a = load_image(path, "RGB")
    except (BatchError, FileNotFoundError) as e:
        raise DataError(str(e)) from e
    return a, (a.shape[0], a.shape[1])


def _resize(a: np.ndarray, size: int, resample: int) -> np.ndarray:
    if a.shape[0] == size and a.shape[1] == size:
        return a
    return np.asarray(Image.fromarray(a).resize((size, size), resample))


def _read_mask(paths: Sequence[Path], hw: tuple[int, int], image: Path, size: int) -> np.ndarray:
    out = np.zeros(hw, bool)
    for p in paths:
        try:
            m = load_image(p, "mask")
        except (BatchError, FileNotFoundError) as e:
            raise DataError(str(e)) from e
        if m.shape != hw:
            raise DataError(f"mask {p} is {m.shape[1]}x{m.shape[0]} but its image {image} is {hw[1]}x{hw[0]}")
        out |= m > 0
    return _resize(out.astype(np.uint8) * 255, size, Image.NEAREST) > 127


def _read_depth(path: Path, hw: tuple[int, int], size: int) -> np.ndarray:
    """The z channel of an MVTec-3D-style ``xyz`` tiff (H x W x 3 float), resized nearest (0 = no data)."""
    import tifffile

    try:
        xyz = tifffile.imread(path)
    except Exception as e:  # tifffile raises several types for corrupt files
        raise DataError(f"cannot read xyz tiff {path}: {e}") from e
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise DataError(f"xyz tiff {path} must be H x W x 3 (x, y, z), got shape {xyz.shape}")
    if xyz.shape[:2] != hw:
        raise DataError(f"xyz tiff {path} is {xyz.shape[1]}x{xyz.shape[0]} but its rgb image is {hw[1]}x{hw[0]}")
    z = np.nan_to_num(xyz[..., 2].astype(np.float32), nan=0.0)
    t = torch.from_numpy(np.ascontiguousarray(z))[None, None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="nearest")[0, 0].numpy()


class FileDataset(Dataset):
    """A dataset given as a list of :class:`FileRecord`; files are read lazily, batch by batch."""

    def __init__(self, records: Sequence[FileRecord], *, category: str, split: str, size: int = 256,
                 root: Path | None = None) -> None:
        if not isinstance(size, int) or size < 8:
            raise DataError(f"image size must be an integer >= 8, got {size!r}")
        self.records = list(records)
        check_unique(self.records, split)
        self.category, self.split, self.size = category, split, size
        self.root = root
        self.has_depth = any(r.depth is not None for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, size={self.size}, n={len(self)})"

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.records]

    def batch(self, indices: Sequence[int]) -> Batch:
        idx = [int(i) for i in indices]
        images, masks, depths, meta = [], [], [], []
        for i in idx:
            if not 0 <= i < len(self):
                raise IndexError(f"index {i} out of range for {self!r}")
            r = self.records[i]
            a, hw = _read_rgb(r.image)
            images.append(_resize(a, self.size, Image.BILINEAR))
            masks.append(_read_mask(r.masks, hw, r.image, self.size))
            if self.has_depth:
                if r.depth is None:
                    raise DataError(f"no xyz depth file for {r.image}")
                depths.append(_read_depth(r.depth, hw, self.size))
            src = str(r.image.relative_to(self.root)) if self.root and r.image.is_relative_to(self.root) else str(r.image)
            meta.append({"source": src, "category": self.category, "split": self.split, "index": i})
        if not idx:
            return Batch(image=torch.zeros(0, 3, self.size, self.size), label=[], meta=[])
        image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        mask = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None]
        depth = torch.from_numpy(np.stack(depths))[:, None] if depths else None
        return Batch(image=image.contiguous(), mask=mask, label=[self.records[i].label for i in idx], meta=meta,
                     depth=depth)


# -- the plain folder layout -------------------------------------------------------------------------------------
NORMAL_DIRS = ("normal", "good")
ABNORMAL_DIRS = ("abnormal", "anomaly", "defect")
MASK_DIRS = ("mask", "masks", "ground_truth")
NORMAL_TEST_DIRS = ("normal_test", "test_good")


def _first_dir(root: Path, names: Sequence[str], given: str | None) -> Path | None:
    if given is not None:
        p = root / given
        if not p.is_dir():
            raise DataError(f"folder {p} does not exist")
        return p
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _find_mask(mask_dir: Path, rel: Path) -> Path | None:
    """The mask of image ``rel`` (relative to the abnormal folder): same name, or ``<stem>_mask``, any extension."""
    folder = mask_dir / rel.parent
    for stem in (rel.stem, f"{rel.stem}_mask"):
        for ext in IMAGE_EXTENSIONS:
            for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
                if cand.is_file():
                    return cand
    return None


def _mask_stem(p: Path) -> str:
    return p.stem[:-5] if p.stem.endswith("_mask") else p.stem


class FolderDataset(FileDataset):
    """``folder:PATH`` — normal / abnormal / mask folders like anomalib's Folder (see the module docstring)."""

    scheme = "folder"

    def __init__(self, root: str | Path, split: str = "train", size: int = 256, *, normal_dir: str | None = None,
                 abnormal_dir: str | None = None, mask_dir: str | None = None, normal_test_dir: str | None = None) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"dataset folder {root} does not exist")
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r} for folder:{root}; use 'train' or 'test'")
        normal = _first_dir(root, NORMAL_DIRS, normal_dir)
        if normal is None:
            raise DataError(f"{root} has no normal-image folder (expected one of: {', '.join(NORMAL_DIRS)})")
        if split == "train":
            records = [FileRecord(p) for p in list_images(normal)]
            if not records:
                raise DataError(f"normal folder {normal} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            records = self._test_records(root, normal_test_dir, abnormal_dir, mask_dir)
        super().__init__(records, category=root.name, split=split, size=size, root=root)

    @staticmethod
    def _test_records(root: Path, normal_test_dir: str | None, abnormal_dir: str | None,
                      mask_dir: str | None) -> list[FileRecord]:
        records: list[FileRecord] = []
        ntest = _first_dir(root, NORMAL_TEST_DIRS, normal_test_dir)
        if ntest is not None:
            records += [FileRecord(p) for p in list_images(ntest)]
        abnormal = _first_dir(root, ABNORMAL_DIRS, abnormal_dir)
        if abnormal is None:
            raise DataError(f"{root} has no abnormal-image folder (expected one of: {', '.join(ABNORMAL_DIRS)})")
        masks = _first_dir(root, MASK_DIRS, mask_dir)
        groups = [(abnormal, "anomaly", list_images(abnormal))] + [(d, d.name, list_images(d)) for d in list_subdirs(abnormal)]
        check_unique(records + [FileRecord(p) for *_, imgs in groups for p in imgs], "test")  # before matching masks
        seen: set[Path] = set()
        for _folder, label, imgs in groups:
            for img in imgs:
                rel = img.relative_to(abnormal)
                m = None
                if masks is not None:
                    m = _find_mask(masks, rel)
                    if m is None:
                        raise DataError(f"no mask for anomalous image {img} in {masks / rel.parent} "
                                        f"(expected {rel.stem}.png or {rel.stem}_mask.png)")
                    seen.add(m)
                records.append(FileRecord(img, label, (m,) if m else ()))
        if masks is not None:  # a mask that matches no image means the names are out of step
            below = sorted(masks.rglob("*"))  # rglob does not follow linked folders; refuse a loop or a broken link
            for d in below:
                why = _unreachable(d)
                if why is not None:
                    raise DataError(f"{d} is {why}")
            for folder in [masks] + [d for d in below if d.is_dir()]:
                for m in list_images(folder):
                    if m not in seen:
                        raise DataError(f"mask {m} matches no image in {abnormal / m.parent.relative_to(masks)} "
                                        f"(looked for {_mask_stem(m)}.*)")
        if not records:
            raise DataError(f"test split of {root} holds no images")
        return records

    @classmethod
    def open(cls, rest: str, *, split: str = "train", size: int = 256, **kw) -> FolderDataset:
        return cls(rest, split=split, size=size, **kw)
