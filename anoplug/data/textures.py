"""Texture sources for methods that paste foreign texture into a normal image (DRAEM uses DTD).

Two kinds, behind one small interface (``len(src)``, ``src.get(i) -> [3,H,W]`` float32 in [0,1]):

- ``"skimage"``: photographs that ship inside scikit-image's wheel, so they work offline with no
  download — brick, grass, gravel (CC0 texture photos), the Hubble deep field, an
  immunohistochemistry slide, coins and handwritten text (near-blank pictures such as ``moon`` and
  ``cell`` are left out). Each picture's largest centred square is cut into ``crops`` x ``crops``
  tiles (default 2 → 28 textures) for some variety.
  This is a stand-in for DTD's 5,640 images, far smaller: say so when you report results.
- a folder path: the Describable Textures Dataset as users download it (``dtd/images/<class>/*.jpg``;
  the folder may be ``dtd``, ``dtd/images`` or any folder of ``<class>/*.jpg``), read lazily.

Like DRAEM, every texture is resized to the target size ignoring its aspect ratio. Resized
tensors are cached (bounded), so repeated draws cost nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anoplug.data.base import DataError
from anoplug.types import BatchError, load_image

__all__ = ["TextureSource", "TexturesBySize", "texture_source", "SKIMAGE_TEXTURES", "TEXTURE_EXTENSIONS"]

#: scikit-image bundled pictures used as textures; all load offline from the installed wheel.
SKIMAGE_TEXTURES = ("brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "coins", "text")
TEXTURE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_CACHE_ITEMS = 256  # at 256² one texture is 0.8 MB


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise DataError(f"texture size must be a positive int or (height, width), got {size!r}")
    return hw  # type: ignore[return-value]


def _to_tensor(a: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """uint8 HW or HWC -> uint8 [3,H,W] resized (bilinear, aspect ignored as in DRAEM)."""
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]
    if a.shape[:2] != hw:
        a = np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((hw[1], hw[0]), Image.BILINEAR))
    return torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).contiguous()


class TextureSource:
    """An indexed set of textures delivered at one size; ``get(i)`` is cached."""

    def __init__(self, name: str, loaders: Sequence[Callable[[], np.ndarray]], labels: Sequence[str],
                 size: int | Sequence[int] = 256) -> None:
        self.name = name
        self.size = _as_hw(size)
        self._loaders = list(loaders)
        self.labels = list(labels)  # a human-readable id per texture (file path or picture name + tile)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()  # uint8: 4x less memory, and what DRAEM augments

    def __len__(self) -> int:
        return len(self._loaders)

    def __repr__(self) -> str:
        return f"TextureSource({self.name!r}, n={len(self)}, size={self.size})"

    def get(self, i: int) -> torch.Tensor:
        """Texture ``i`` as float32 ``[3,H,W]`` in [0,1] (a fresh copy; the cache is not exposed)."""
        return self.get_uint8(i).float().div_(255.0)

    def get_uint8(self, i: int) -> torch.Tensor:
        """Texture ``i`` as uint8 ``[3,H,W]``, as decoded (a fresh copy)."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"texture index {i} out of range for {self!r}")
        if i not in self._cache:
            self._cache[i] = _to_tensor(self._loaders[i](), self.size)
            if len(self._cache) > _CACHE_ITEMS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return self._cache[i].clone()

    def stack(self, indices: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Several textures as ``[k,3,H,W]``: float32 in [0,1], or ``dtype=torch.uint8`` as decoded."""
        if dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"texture dtype must be torch.float32 or torch.uint8, got {dtype}")
        if not len(indices):
            return torch.zeros(0, 3, *self.size, dtype=dtype)
        out = torch.stack([self.get_uint8(i) for i in indices])
        return out if dtype == torch.uint8 else out.float().div_(255.0)

    def sample(self, rng: torch.Generator) -> tuple[int, torch.Tensor]:
        """A uniformly drawn texture (its index and tensor) from an explicit generator."""
        i = int(torch.randint(0, len(self), (1,), generator=rng))
        return i, self.get(i)


# -- scikit-image's bundled pictures -------------------------------------------------------------------------
_SKIMAGE_PICTURES: dict[str, np.ndarray] = {}


def _skimage_picture(name: str) -> np.ndarray:
    if name not in _SKIMAGE_PICTURES:
        import skimage.data

        try:
            a = np.asarray(getattr(skimage.data, name)())
        except Exception as e:  # a picture that would need a download is reported, never fetched
            raise DataError(f"scikit-image picture {name!r} is not available offline: {e}") from e
        side = min(a.shape[:2])
        y0, x0 = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
        _SKIMAGE_PICTURES[name] = a[y0:y0 + side, x0:x0 + side]
    return _SKIMAGE_PICTURES[name]


def _skimage_tile(name: str, row: int, col: int, crops: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        a = _skimage_picture(name)
        t = a.shape[0] // crops
        return a[row * t:(row + 1) * t, col * t:(col + 1) * t]
    return load


def _skimage_source(size: int | Sequence[int], crops: int) -> TextureSource:
    if not 1 <= crops <= 8:
        raise DataError(f"crops must be in [1, 8], got {crops}")
    loaders, labels = [], []
    for name in SKIMAGE_TEXTURES:
        for r in range(crops):
            for c in range(crops):
                loaders.append(_skimage_tile(name, r, c, crops))
                labels.append(f"skimage:{name}[{r},{c}]")
    return TextureSource("skimage", loaders, labels, size)


# -- a DTD-style folder --------------------------------------------------------------------------------------------
def _file_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            return load_image(path, "RGB")
        except (BatchError, FileNotFoundError) as e:
            raise DataError(str(e)) from e
    return load


def _folder_files(root: Path) -> list[Path]:
    """``<class>/*.jpg`` under ``root`` or under ``root/images`` (DTD's own layout)."""
    for base in (root, root / "images"):
        if base.is_dir():
            files = sorted(p for p in base.glob("*/*")
                           if p.is_file() and p.suffix.lower() in TEXTURE_EXTENSIONS and not p.name.startswith("."))
            if files:
                return files
    return []


def _folder_source(path: str | Path, size: int | Sequence[int]) -> TextureSource:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"texture folder {root} does not exist (expected a DTD folder with <class>/*.jpg, "
                        f"or 'skimage' for the bundled textures)")
    files = _folder_files(root)
    if not files:
        raise DataError(f"texture folder {root} holds no images: expected {root}/<class>/*.jpg or "
                        f"{root}/images/<class>/*.jpg ({', '.join(TEXTURE_EXTENSIONS)})")
    return TextureSource(str(root), [_file_loader(p) for p in files], [str(p.relative_to(root)) for p in files], size)


def texture_source(name_or_path: str | Path = "skimage", size: int | Sequence[int] = 256, *,
                   crops: int = 2) -> TextureSource:
    """``"skimage"`` (bundled, offline) or the path of a DTD-style folder; textures come at ``size``."""
    if str(name_or_path) == "skimage":
        return _skimage_source(size, crops)
    return _folder_source(name_or_path, size)


class TexturesBySize:
    """One :func:`texture_source` per image size, built on first use; ``absent`` names "no textures".

    A generator sees batches of several sizes and wants the same textures resized to each: the
    per-size sources are kept (their files still load lazily), and ``len`` is the number of
    textures without decoding any of them (0 when the generator's setting is ``absent``).
    """

    def __init__(self, name_or_path: str | Path, *, absent: str | None = None) -> None:
        self.name_or_path, self.absent = name_or_path, absent
        self._by_size: dict[tuple[int, int], TextureSource] = {}

    def __call__(self, size: int | Sequence[int]) -> TextureSource:
        hw = _as_hw(size)
        if hw not in self._by_size:
            self._by_size[hw] = texture_source(self.name_or_path, size=hw)
        return self._by_size[hw]

    def __len__(self) -> int:
        return 0 if self.absent is not None and str(self.name_or_path) == self.absent else len(self((8, 8)))
