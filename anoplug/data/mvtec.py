"""Loaders for the MVTec family on the user's disk: MVTec AD, MVTec LOCO AD and MVTec 3D-AD.

They read the layouts the datasets ship in and never download (the datasets are CC BY-NC-SA 4.0;
nothing of them is in this repository). ``mvtec:PATH/CATEGORY`` points at one category folder.

- MVTec AD: ``train/good/*.png``, ``test/<defect>/*.png``, ``ground_truth/<defect>/<stem>_mask.png``.
- MVTec LOCO AD: as above plus ``validation/good``; each anomalous test image has a *folder*
  ``ground_truth/<defect>/<stem>/`` of mask PNGs (one per broken constraint), merged here.
- MVTec 3D-AD: ``<split>/<defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}``; ``depth`` is the
  z channel of the organised point cloud (0 where the sensor saw nothing).

Every missing mask, mask without an image, or unreadable file is a
:class:`~anoplug.data.base.DataError` naming the path; image conversions are those of
:func:`anoplug.types.load_image` (``docs/image_input.md``). A linked ``<defect>/`` folder or file
that lists an image twice in one split, a broken link or a link loop is a ``DataError`` too.
"""

from __future__ import annotations

from pathlib import Path

from anoplug.data.base import DataError
from anoplug.data.folder import IMAGE_EXTENSIONS, FileDataset, FileRecord, check_unique, list_images, list_subdirs
from anoplug.types import GOOD

__all__ = ["MVTecAD", "MVTecLOCO", "MVTec3D"]


def _category_dir(rest: str | Path, scheme: str) -> Path:
    root = Path(rest).expanduser()
    if not root.is_dir():
        raise DataError(f"{scheme}: category folder {root} does not exist (expected {scheme}:PATH/CATEGORY)")
    return root


def _split_dir(root: Path, split: str, allowed: tuple[str, ...], scheme: str) -> Path:
    if split not in allowed:
        raise DataError(f"unknown split {split!r} for {scheme}:{root}; use one of {', '.join(allowed)}")
    d = root / split
    if not d.is_dir():
        raise DataError(f"{scheme}: {root} has no {split}/ folder")
    return d


def _defect_dirs(split_dir: Path) -> list[Path]:
    dirs = list_subdirs(split_dir)
    if not dirs:
        raise DataError(f"{split_dir} holds no <defect>/ folders (expected at least good/)")
    return dirs


def _check_orphans(gt_dir: Path, used: set[Path], image_dir: Path, kind: str) -> None:
    """A mask (or mask folder) without an image means image and mask names are out of step."""
    if not gt_dir.is_dir():
        return
    for m in sorted(gt_dir.iterdir()):
        if m.name.startswith("."):
            continue
        if m not in used:
            raise DataError(f"{kind} {m} matches no image in {image_dir}")


class MVTecAD(FileDataset):
    """``mvtec:PATH/CATEGORY`` — MVTec AD. Splits ``train`` (good only) and ``test``."""

    scheme = "mvtec"
    splits: tuple[str, ...] = ("train", "test")

    def __init__(self, root: str | Path, split: str = "train", size: int = 256) -> None:
        root = _category_dir(root, self.scheme)
        records = []
        listing = [(d, list_images(d)) for d in _defect_dirs(_split_dir(root, split, self.splits, self.scheme))]
        check_unique([FileRecord(p) for _, images in listing for p in images], split)  # before matching masks
        for d, images in listing:
            if d.name == GOOD or split == "train":
                records += [FileRecord(p, GOOD if split == "train" else d.name) for p in images]
                continue
            records += self._anomalous(root, d, images)
        if not records:
            raise DataError(f"{self.scheme}: {root / split} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        super().__init__(records, category=root.name, split=split, size=size, root=root)

    def _anomalous(self, root: Path, d: Path, images: list[Path]) -> list[FileRecord]:
        gt = root / "ground_truth" / d.name
        out, used = [], set()
        for p in images:
            mask = next((gt / f"{p.stem}_mask{e}" for e in (".png", p.suffix) if (gt / f"{p.stem}_mask{e}").is_file()), None)
            if mask is None:
                raise DataError(f"no ground-truth mask for {p}: expected {gt / (p.stem + '_mask.png')}")
            used.add(mask)
            out.append(FileRecord(p, d.name, (mask,)))
        _check_orphans(gt, used, d, "mask")
        return out

    @classmethod
    def open(cls, rest: str, *, split: str = "train", size: int = 256, **kw) -> MVTecAD:
        return cls(rest, split=split, size=size, **kw)


class MVTecLOCO(MVTecAD):
    """``mvtec-loco:PATH/CATEGORY`` — MVTec LOCO AD; a test image's mask folder is merged into one mask."""

    scheme = "mvtec-loco"
    splits = ("train", "validation", "test")

    def _anomalous(self, root: Path, d: Path, images: list[Path]) -> list[FileRecord]:
        gt = root / "ground_truth" / d.name
        out, used = [], set()
        for p in images:
            folder = gt / p.stem
            masks = tuple(list_images(folder)) if folder.is_dir() else ()
            if not masks:
                raise DataError(f"no ground-truth masks for {p}: expected PNGs in {folder}/")
            used.add(folder)
            out.append(FileRecord(p, d.name, masks))
        _check_orphans(gt, used, d, "mask folder")
        return out


class MVTec3D(FileDataset):
    """``mvtec-3d:PATH/CATEGORY`` — MVTec 3D-AD: rgb image, ``depth`` = z of the xyz tiff, gt mask."""

    scheme = "mvtec-3d"
    splits = ("train", "validation", "test")

    def __init__(self, root: str | Path, split: str = "train", size: int = 256) -> None:
        root = _category_dir(root, self.scheme)
        records = []
        listing = []
        for d in _defect_dirs(_split_dir(root, split, self.splits, self.scheme)):
            if not (d / "rgb").is_dir():
                raise DataError(f"{self.scheme}: {d} has no rgb/ folder")
            if not (d / "xyz").is_dir():
                raise DataError(f"{self.scheme}: {d} has no xyz/ folder (the point clouds give the depth)")
            listing.append((d, list_images(d / "rgb")))
        check_unique([FileRecord(p) for _, images in listing for p in images], split)  # before matching xyz and masks
        for d, images in listing:
            rgb_dir, xyz_dir, gt_dir = d / "rgb", d / "xyz", d / "gt"
            used = set()
            for p in images:
                xyz = next((xyz_dir / f"{p.stem}{e}" for e in (".tiff", ".tif") if (xyz_dir / f"{p.stem}{e}").is_file()), None)
                if xyz is None:
                    raise DataError(f"no xyz point cloud for {p}: expected {xyz_dir / (p.stem + '.tiff')}")
                used.add(xyz)
                label = GOOD if (d.name == GOOD or split == "train") else d.name
                mask = gt_dir / f"{p.stem}.png"
                if label != GOOD and not mask.is_file():
                    raise DataError(f"no ground-truth mask for {p}: expected {mask}")
                records.append(FileRecord(p, label, (mask,) if mask.is_file() else (), xyz))
            _check_orphans(xyz_dir, used, rgb_dir, "point cloud")
        if not records:
            raise DataError(f"{self.scheme}: {root / split} holds no images")
        super().__init__(records, category=root.name, split=split, size=size, root=root)

    @classmethod
    def open(cls, rest: str, *, split: str = "train", size: int = 256, **kw) -> MVTec3D:
        return cls(rest, split=split, size=size, **kw)
