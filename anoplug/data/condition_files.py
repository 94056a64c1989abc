"""Condition inputs read from folders: reference anomalies (``--references DIR``) and depth maps (``--depth DIR``).

Both are checked when they are opened (names, pairing, formats, shapes), so a bad folder is one
:class:`~anoplug.data.base.DataError` naming the flag and the file before a run writes anything;
pixels are decoded when a batch needs them.

**References** (``--references DIR``): every image file directly in ``DIR`` whose stem does not end
in ``_mask`` is one reference anomaly, sorted by name. ``NAME_mask.<ext>`` (any image extension) is
its defect mask (non-zero = defect, as ``--masks``); its caption is ``captions.json``'s entry
(a JSON object keyed by the file name or its stem) or the text of ``NAME.txt``. Masks and
captions are all-or-none: a folder where only some references have one is refused, because a
method cannot tell "no mask" from "forgot the mask". Images are resized to the run's size
(bilinear; masks nearest), exactly like the dataset loaders.

**Depth** (``--depth DIR``): one depth map per file, sorted by name; sample *i* takes file
``i % n`` (cycled like ``--masks``). Larger values are farther, as ``toy:surface3d`` and MVTec
3D-AD's z. Formats and normalisation:

- 16-bit grey PNG / TIFF: ``v / 65535``; 8-bit grey PNG / TIFF: ``v / 255`` (by the format's
  depth, never by the values: ``docs/image_input.md``'s rule 1, but with full 16-bit precision);
- float TIFF (grey, or H x W x 3 ``xyz`` whose z is taken, as the MVTec 3D-AD loader does) and
  ``.npy`` (H x W float or integer, no pickles): the values as stored, in their own units;
- non-finite values (NaN, ±inf: sensor holes) become 0, "no data", as the MVTec 3D-AD loader does.

Each map is resized to the run's size with nearest neighbour (so 0 = no data never blends into
its neighbours); methods normalise depth themselves (AnomalyHybrid min-max scales each map).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anoplug.data.base import DataError
from anoplug.data.folder import IMAGE_EXTENSIONS, list_images

__all__ = ["ReferenceSet", "read_references", "DepthFolder", "read_depth", "CAPTIONS_FILE", "MASK_SUFFIX",
           "DEPTH_EXTENSIONS"]

CAPTIONS_FILE = "captions.json"
MASK_SUFFIX = "_mask"
DEPTH_EXTENSIONS = (".png", ".tif", ".tiff", ".npy")


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


# -- references -------------------------------------------------------------------------------------------------------
@dataclass
class ReferenceSet:
    """The K references of a ``--references`` folder: image files, their masks and captions (both optional)."""

    folder: Path
    images: list[Path]
    masks: list[Path] | None
    captions: list[str] | None

    def __len__(self) -> int:
        return len(self.images)

    def names(self) -> list[str]:
        return [p.name for p in self.images]

    def identity(self) -> dict:
        files = [*self.images, *(self.masks or [])]
        caps = hashlib.sha256(json.dumps(self.captions).encode()).hexdigest()[:16] if self.captions else None
        return {"dir": str(self.folder), "files": len(self.images), "masks": self.masks is not None,
                "sha256": _digest(files), "captions": caps}

    def load(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(images [K,3,H,W], masks [K,1,H,W] or None)`` float32 at ``size``."""
        from PIL import Image

        from anoplug.types import BatchError, load_image

        h, w = size
        imgs, masks = [], []
        for k, p in enumerate(self.images):
            try:
                a = load_image(p, mode="RGB")
                if a.shape[:2] != (h, w):
                    a = np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
                imgs.append(a)
                if self.masks is not None:
                    m = load_image(self.masks[k], mode="mask")
                    if m.shape != (h, w):
                        m = np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST))
                    masks.append(m >= 128)
            except (BatchError, FileNotFoundError) as e:
                raise DataError(f"--references {self.folder}: {e}") from None
        image = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div(255)
        mask = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None] if masks else None
        return image.contiguous(), mask


def _read_captions(folder: Path, images: list[Path]) -> list[str] | None:
    """Captions from ``captions.json`` ({name or stem: text}) or ``NAME.txt``; all or none."""
    flag = f"--references {folder}"
    by_stem: dict[str, str] = {}
    cj = folder / CAPTIONS_FILE
    if cj.is_file():
        try:
            table = json.loads(cj.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{flag}: {CAPTIONS_FILE} is not valid JSON ({e})") from None
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise DataError(f"{flag}: {CAPTIONS_FILE} must be a JSON object {{\"NAME\": \"caption\", ...}}")
        known = {p.name: p.stem for p in images} | {p.stem: p.stem for p in images}
        for key, text in table.items():
            if key not in known:
                raise DataError(f"{flag}: {CAPTIONS_FILE} has a caption for {key!r}, which is not a reference image "
                                f"(references: {', '.join(p.name for p in images)})")
            by_stem[known[key]] = text
    for p in images:
        txt = p.with_suffix(".txt")
        if txt.is_file():
            if p.stem in by_stem:
                raise DataError(f"{flag}: {p.name} has a caption in both {CAPTIONS_FILE} and {txt.name}: keep one")
            try:
                by_stem[p.stem] = txt.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{flag}: {txt.name} is not UTF-8 text ({e})") from None
    if not by_stem:
        return None
    missing = [p.name for p in images if p.stem not in by_stem]
    if missing:
        raise DataError(f"{flag}: {missing[0]} has no caption but other references do: give every reference a "
                        f"caption ({CAPTIONS_FILE} or NAME.txt) or none")
    caps = [by_stem[p.stem].strip() for p in images]
    empty = [p.name for p, c in zip(images, caps) if not c]
    if empty:
        raise DataError(f"{flag}: the caption of {empty[0]} is empty")
    return caps


def read_references(folder: str | Path) -> ReferenceSet:
    """Open and check a ``--references`` folder (names, pairing, captions); pixels are read by :meth:`ReferenceSet.load`."""
    d = Path(folder)
    flag = f"--references {d}"
    if not d.is_dir():
        raise DataError(f"{flag}: not a directory of reference images")
    files = list_images(d)
    images = [p for p in files if not p.stem.endswith(MASK_SUFFIX)]
    if not images:
        raise DataError(f"{flag}: no reference images ({', '.join(IMAGE_EXTENSIONS)}; NAME_mask.* are masks)")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise DataError(f"{flag}: two reference images share the name {dup!r} (e.g. .png and .jpg): keep one")
    mask_of = {}
    for p in files:
        if p.stem.endswith(MASK_SUFFIX):
            stem = p.stem[: -len(MASK_SUFFIX)]
            if stem not in stems:
                raise DataError(f"{flag}: mask {p.name} has no reference image {stem}.*")
            if stem in mask_of:
                raise DataError(f"{flag}: {stem} has two masks ({mask_of[stem].name}, {p.name}): keep one")
            mask_of[stem] = p
    masks = None
    if mask_of:
        missing = [p.name for p in images if p.stem not in mask_of]
        if missing:
            raise DataError(f"{flag}: {missing[0]} has no mask {Path(missing[0]).stem}{MASK_SUFFIX}.png but other "
                            "references do: give every reference a mask or none")
        masks = [mask_of[p.stem] for p in images]
    return ReferenceSet(d, images, masks, _read_captions(d, images))


# -- depth ----------------------------------------------------------------------------------------------------------------
def _depth_array(path: Path) -> np.ndarray:
    """The stored depth of ``path`` as float32 H x W, normalised as the module docstring says."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"--depth {path}: not a readable .npy array ({e})") from None
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim != 2 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise DataError(f"--depth {path}: a depth .npy must be an H x W number array, got {a.dtype} {a.shape}")
        return a.astype(np.float32)
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            a = tifffile.imread(path)
        except Exception as e:  # tifffile raises several types for corrupt files
            raise DataError(f"--depth {path}: cannot read the TIFF ({e})") from None
        if a.ndim == 3 and a.shape[-1] == 3 and np.issubdtype(a.dtype, np.floating):
            a = a[..., 2]  # an organised point cloud (x, y, z): its z, as the MVTec 3D-AD loader
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim != 2:
            raise DataError(f"--depth {path}: a depth TIFF must be one channel (or float x,y,z), got shape {a.shape}")
        if a.dtype == np.uint16:
            return a.astype(np.float32) / 65535
        if a.dtype == np.uint8:
            return a.astype(np.float32) / 255
        if np.issubdtype(a.dtype, np.floating):
            return a.astype(np.float32)
        raise DataError(f"--depth {path}: TIFF of {a.dtype} has no defined range; use 8/16-bit unsigned or float")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.width * im.height > (Image.MAX_IMAGE_PIXELS or 2**62):
                raise DataError(f"--depth {path}: {im.width}x{im.height} is larger than PIL's pixel limit")
            mode = im.mode
            if mode.startswith("I;16") or mode == "I":  # PNG has no integer depth above 16
                return np.asarray(im, dtype=np.uint16 if mode.startswith("I;16") else np.int32).astype(np.float32) / 65535
            if mode == "L":
                return np.asarray(im, dtype=np.uint8).astype(np.float32) / 255
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"--depth {path}: not a readable PNG ({e})") from None
    raise DataError(f"--depth {path}: a depth PNG must be 8- or 16-bit grey, got mode {mode}")


def read_depth(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Depth map ``path`` as float32 ``size`` (H, W): normalised, non-finite -> 0, resized nearest."""
    a = np.nan_to_num(_depth_array(Path(path)), nan=0.0, posinf=0.0, neginf=0.0)
    if a.shape != tuple(size):
        t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
        a = torch.nn.functional.interpolate(t, size=tuple(size), mode="nearest")[0, 0].numpy()
    return a


class DepthFolder:
    """The sorted depth maps of a ``--depth`` folder; sample *i* takes file ``i % n``."""

    def __init__(self, folder: str | Path) -> None:
        d = Path(folder)
        if not d.is_dir():
            raise DataError(f"--depth {d}: not a directory of depth maps")
        self.folder = d
        self.files = list_images(d, DEPTH_EXTENSIONS)
        if not self.files:
            raise DataError(f"--depth {d}: no depth maps ({', '.join(DEPTH_EXTENSIONS)})")
        for p in self.files:  # a file of the wrong kind fails now, before the run writes anything
            _check_header(p)

    def __len__(self) -> int:
        return len(self.files)

    def file(self, i: int) -> Path:
        return self.files[int(i) % len(self.files)]

    def identity(self) -> dict:
        return {"dir": str(self.folder), "files": len(self.files), "sha256": _digest(self.files)}

    def maps(self, indices: Sequence[int], size: tuple[int, int]) -> torch.Tensor:
        """``[B,1,H,W]`` float32 depth of samples ``indices``."""
        return torch.from_numpy(np.stack([read_depth(self.file(i), size) for i in indices]))[:, None].contiguous()


def _check_header(path: Path) -> None:
    """The format checks that need no pixels (mode, dtype, shape), so every file is checked before a run."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            ok = (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 1)) and (
                np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer))
            what = f"{a.dtype} {a.shape}"
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                shape, dtype = tuple(page.shape), np.dtype(page.dtype)
            ok = (len(shape) == 2 or (len(shape) == 3 and (shape[-1] == 1 or (shape[-1] == 3 and dtype.kind == "f")))) \
                and (dtype in (np.uint8, np.uint16) or dtype.kind == "f")
            what = f"{dtype} {shape}"
        else:
            from PIL import Image

            with Image.open(path) as im:
                ok, what = im.mode in ("L", "I", "I;16", "I;16L", "I;16B", "I;16N"), f"mode {im.mode}"
    except DataError:
        raise
    except Exception as e:  # unreadable in any of the three readers' ways
        raise DataError(f"--depth {path}: not a readable depth map ({e})") from None
    if not ok:
        raise DataError(f"--depth {path}: not a one-channel depth map (16-bit/8-bit grey PNG or TIFF, float TIFF, "
                        f"H x W .npy), got {what}")
