"""The data contract every generator, evaluator and dataset speaks: :class:`Batch`.

One layout everywhere (float32, channels first, values in [0, 1]) fixes the value-range
confusion that plagues ported generators; the lossless uint8/PIL/path conversions mean
users never hand-convert. Image files are read by :func:`load_image`, whose every conversion (bit depth,
float range, palette, CMYK, alpha, masks, size cap) is a row of ``docs/image_input.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from anoplug.conditions import Conditions, is_binary

GOOD = "good"


class BatchError(ValueError):
    """A batch violates the data contract (shape, dtype, range)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise BatchError(msg)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B,C,H,W] float in [0,1] -> [B,H,W,C] uint8 with round-half-even, lossless for k/255."""
    return (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(a: np.ndarray) -> torch.Tensor:
    """[B,H,W,C] or [H,W,C] or [H,W] uint8 -> [B,C,H,W] float32 in [0,1]."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise BatchError(f"expected uint8 array, got {a.dtype}")
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None] if a.shape[-1] in (1, 3) else a[..., None]
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div_(255.0)


# -- reading image files -------------------------------------------------------------------------------------------
# Every rule below is a row of docs/image_input.md; change both together.
_U16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_AS_IS_MODES = ("1", "L", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "YCbCr")  # PIL converts these exactly
_ALPHA_MODES = ("LA", "PA", "RGBA")
_TIFF_MAGIC = (b"II*\0", b"MM\0*")
LOAD_MODES = ("RGB", "L", "mask")


def _int_bits(im: Image.Image) -> tuple[int, bool] | None:
    """(bits per sample, signed) of a PIL mode-"I" image, from the file format; None when it cannot tell."""
    if im.format == "PNG":  # PNG has no integer depth above 16 (older Pillow opens 16-bit grey as "I")
        return 16, False
    tags = getattr(im, "tag_v2", None)
    if im.format == "TIFF" and tags is not None:
        bits, fmt = tags.get(258, (None,)), tags.get(339, (1,))
        bits = bits[0] if isinstance(bits, tuple) else bits
        fmt = fmt[0] if isinstance(fmt, tuple) else fmt
        if isinstance(bits, int):
            return bits, fmt == 2
    return None


def _float_to_u8(a: np.ndarray, path: Path) -> np.ndarray:
    """A float image: [0, 1] is scaled by 255, [0, 255] is kept; anything else (or NaN/inf) is an error.

    The ranges include half an 8-bit level of slack (values that round into 0..255 anyway), so float noise
    such as 1.0000001 or -1e-7 is accepted; rounding is half-to-even (0.5 -> 127.5 -> 128).
    """
    if a.size and not np.isfinite(a).all():
        raise BatchError(f"float image {path} contains NaN or infinite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= -0.5 / 255 and hi <= 1 + 0.5 / 255:
        a = a.astype(np.float64) * 255.0
    elif not (lo >= -0.5 and hi <= 255.5):
        raise BatchError(f"float image {path} has values in [{lo:.6g}, {hi:.6g}]; expected [0, 1] or [0, 255] "
                         f"(rescale it, or save it as 8- or 16-bit)")
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _array_to_u8(a: np.ndarray, path: Path, what: str) -> np.ndarray:
    """uint8 as is, uint16 by its high byte (v >> 8), float by range; other integer depths are an error."""
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if a.dtype.kind == "f":
        return _float_to_u8(a, path)
    raise BatchError(f"image {path} is {what}, which has no defined black and white level; "
                     f"save it as 8- or 16-bit unsigned, or as float in [0, 1]")


def _to_8bit(im: Image.Image, path: Path) -> Image.Image:
    """``im`` as a PIL image in a mode PIL converts to RGB/L exactly (see docs/image_input.md)."""
    m = im.mode
    if m == "P" and "transparency" in im.info:
        return im.convert("RGBA")  # the palette's colours; the transparency is then dropped like any alpha
    if m in _AS_IS_MODES:
        return im
    if m == "CMYK":  # PIL's naive formula, R = (255 - C)(255 - K) / 255, without any ICC profile: approximate
        return im.convert("RGB")
    if m in _U16_MODES:
        return Image.fromarray(_array_to_u8(np.asarray(im).astype(np.uint16), path, "16-bit"), "L")
    if m == "I":
        bits = _int_bits(im)
        if bits == (16, False):
            return Image.fromarray(_array_to_u8(np.asarray(im).astype(np.uint16), path, "16-bit"), "L")
        what = "integer of unknown depth" if bits is None else f"{bits[0]}-bit {'signed' if bits[1] else 'unsigned'} integer"
        raise BatchError(f"image {path} is {what}, which has no defined black and white level; "
                         f"save it as 8- or 16-bit unsigned, or as float in [0, 1]")
    if m == "F":
        return Image.fromarray(_float_to_u8(np.asarray(im), path), "L")
    raise BatchError(f"image {path} has PIL mode {m!r}, which anoplug does not convert; save it as 8-bit RGB or grey")


def _mask_nonzero(a: np.ndarray, alpha: np.ndarray | None, path: Path) -> np.ndarray:
    """Anomalous where any colour channel of the stored value is non-zero and the pixel is not transparent."""
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        raise BatchError(f"mask {path} contains NaN or infinite values")
    nz = a != 0
    if nz.ndim == 3:
        nz = nz.any(-1)
    if alpha is not None:
        nz &= alpha != 0
    return nz.astype(np.uint8) * 255


def _pil_mask(im: Image.Image, path: Path) -> np.ndarray:
    m = im.mode
    if m == "P" and "transparency" in im.info:
        im, m = im.convert("RGBA"), "RGBA"
    elif m in ("P", "YCbCr"):
        im, m = im.convert("RGB"), "RGB"
    elif m == "PA":
        im, m = im.convert("RGBA"), "RGBA"
    if m not in ("1", "L", "LA", "RGB", "RGBA", "RGBX", "I", "F") + _U16_MODES:
        raise BatchError(f"mask {path} has PIL mode {m!r}; save masks as 8-bit grey (0 = normal, non-zero = anomalous)")
    a = np.asarray(im)
    if m in _ALPHA_MODES:
        return _mask_nonzero(a[..., :-1], a[..., -1], path)
    return _mask_nonzero(a[..., :3] if m == "RGBX" else a, None, path)


def _tiff_fallback(path: Path, mode: str) -> np.ndarray:
    """TIFFs PIL cannot decode (float16/64, multi-channel float or 16-bit planar): read by tifffile, same rules."""
    import logging

    import tifffile

    notes: list[str] = []

    def note(record: logging.LogRecord) -> bool:  # tifffile logs what it finds wrong: keep it for the message
        notes.append(record.getMessage())
        return False

    log = logging.getLogger("tifffile")
    log.addFilter(note)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            _check_pixels(path, int(page.imagelength) * int(page.imagewidth))
            photometric = int(page.photometric)
            a, axes = page.asarray(), page.axes
    except BatchError:
        raise
    except Exception as e:
        why = "; ".join(notes) or str(e) or type(e).__name__
        raise BatchError(f"cannot read image {path}: a TIFF neither PIL nor tifffile can decode ({why})") from None
    finally:
        log.removeFilter(note)
    if photometric not in (1, 2):  # MINISBLACK, RGB; not palette, CMYK, YCbCr, Lab, ... in a form PIL cannot read
        raise BatchError(f"TIFF {path} has photometric interpretation {photometric}, which anoplug does not convert "
                         f"when PIL cannot decode the file; save it as grey or RGB")
    if a.ndim == 3 and axes.startswith("S"):  # planar (separate) samples first
        a = np.moveaxis(a, 0, -1)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 2, 3, 4))):
        raise BatchError(f"TIFF {path} has shape {a.shape} ({axes}); expected H x W grey or H x W x 3 colour")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    alpha = None
    if a.ndim == 3 and a.shape[-1] in (2, 4):  # grey + alpha, RGB + alpha
        a, alpha = a[..., :-1], a[..., -1]
        a = a[..., 0] if a.shape[-1] == 1 else a
    if mode == "mask":
        return _mask_nonzero(a, alpha, path)
    im = Image.fromarray(np.ascontiguousarray(_array_to_u8(a, path, f"{a.dtype.name} TIFF")))
    return np.asarray(im.convert(mode))


def _deep_colour(im: Image.Image, f) -> bool:
    """A 16-bit-per-channel colour (or grey + alpha) file that PIL decoded to 8 bit by the high byte."""
    if im.mode not in ("RGB", "RGBA", "LA"):
        return False
    if im.format == "PNG":
        f.seek(24)  # IHDR: 8-byte signature, length, type, width, height, then bit depth
        return f.read(1) == b"\x10"
    tags = getattr(im, "tag_v2", None)
    if im.format == "TIFF" and tags is not None:
        bits = tags.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    return False


def _check_pixels(path: Path, n: int) -> None:
    cap = Image.MAX_IMAGE_PIXELS
    if cap is not None and n > cap:
        raise BatchError(f"image {path} has {n} pixels, more than the limit of {int(cap)} (a decompression bomb, or an "
                         f"image too large to hold); raise PIL.Image.MAX_IMAGE_PIXELS to read it")


def load_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Read an image file into uint8 HWC RGB (``mode="RGB"``), HW grey (``"L"``) or an HW mask (``"mask"``).

    Every conversion is a row of ``docs/image_input.md``; in short: 16-bit images keep their high byte
    (``v >> 8``, by the format's depth, never by the values), float images in [0, 1] are scaled by 255 and
    in [0, 255] kept (rounded half to even), palette images go through their palette, CMYK by PIL's formula,
    alpha is dropped; 32-bit and signed integer images, float images in other ranges and unknown modes are
    refused. ``mode="mask"`` gives {0, 255}: a pixel is anomalous when any channel of its *stored* value is
    non-zero (at any bit depth) and it is not fully transparent. A missing file is a ``FileNotFoundError``;
    anything unreadable, truncated, refused, or larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's
    decompression-bomb limit, an error here, not a warning) is a :class:`BatchError` naming the file.
    """
    if mode not in LOAD_MODES:
        raise ValueError(f"load_image mode must be one of {', '.join(LOAD_MODES)}, got {mode!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL warns at 1x its limit: refuse
        out = _read(path, mode)
    for w in caught:  # a file that read fine passes PIL's remarks on (corrupt EXIF, ...); a refused one only errs
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _read(path: Path, mode: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            try:
                im = Image.open(f)
            except UnidentifiedImageError:
                f.seek(0)
                head = f.read(4)
                if head in _TIFF_MAGIC:  # a TIFF PIL has no decoder for (float64, float RGB, ...)
                    return _tiff_fallback(path, mode)
                what = "the file is empty (0 bytes)" if not head else "not an image file PIL can decode"
                raise BatchError(f"cannot read image {path}: {what}") from None
            _check_pixels(path, im.width * im.height)
            im.load()
            if mode == "mask":
                if _deep_colour(im, f):  # PIL keeps only the high byte of 16-bit colour: read the stored values
                    if im.format == "TIFF":
                        return _tiff_fallback(path, mode)
                    raise BatchError(f"mask {path} is a 16-bit colour {im.format}, whose low byte PIL drops (a "
                                     f"value below 256 would read as 0); save masks as 8- or 16-bit grey")
                return _pil_mask(im, path)
            return np.asarray(_to_8bit(im, path).convert(mode))
    except BatchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BatchError(f"image {path} is larger than PIL.Image.MAX_IMAGE_PIXELS ({e}); "
                         f"raise that limit to read it") from None
    except MemoryError:
        raise
    except Exception as e:  # PIL and tifffile raise many types for corrupt files; all of them mean "bad file"
        raise BatchError(f"cannot read image {path}: {e or type(e).__name__}") from e


@dataclass
class Batch:
    """A batch of images with masks and labels.

    - ``image``: float32 ``[B,3,H,W]`` in [0,1];
    - ``mask``: float32 ``[B,1,H,W]`` in {0,1} (1 = anomalous pixel); a method with soft
      labels keeps them in ``extras["soft_mask"]``;
    - ``label``: one string per sample, ``"good"`` for normal, else the anomaly type;
    - ``meta``: one dict per sample (method, params, seed, source, sampled parameters);
    - optional ``object_mask`` ``[B,1,H,W]`` {0,1}, ``depth`` ``[B,1,H,W]`` float32,
      ``text`` (one caption per sample), ``extras`` (named tensors, leading dim B);
    - ``conditions``: what each sample is asked for (target mask, boxes, prompt, paired
      source, references), see :class:`anoplug.conditions.Conditions`.
    """

    image: torch.Tensor
    mask: torch.Tensor | None = None
    label: list[str] | None = None
    meta: list[dict] | None = None
    object_mask: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    text: list[str] | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    conditions: Conditions = field(default_factory=Conditions)

    def __post_init__(self) -> None:
        if not isinstance(self.image, torch.Tensor):
            raise BatchError(f"Batch.image must be a torch.Tensor, got {type(self.image).__name__}")
        if self.image.ndim == 3:
            self.image = self.image[None]
        b, _, h, w = self.image.shape if self.image.ndim == 4 else (0, 0, 0, 0)
        if self.mask is None and self.image.ndim == 4:
            self.mask = torch.zeros(b, 1, h, w, dtype=torch.float32, device=self.image.device)
        if self.label is None:
            self.label = [GOOD] * len(self.image)
        if self.meta is None:
            self.meta = [{} for _ in range(len(self.image))]
        self.validate()

    # -- contract -------------------------------------------------------------------
    def validate(self, *, values: bool = True) -> Batch:
        """Raise :class:`BatchError` naming the field that breaks the contract.

        ``values=False`` checks only structure (shapes, dtypes, lengths): what
        ``Generator.generate`` does on its own output, where a full pass over the pixels
        would cost more than the fastest generators; the conformance kit checks values.
        """
        x = self.image
        _check(x.ndim == 4 and x.shape[1] == 3, f"image must be [B,3,H,W], got {tuple(x.shape)}")
        _check(x.dtype == torch.float32, f"image must be float32, got {x.dtype}")
        b, _, h, w = x.shape
        if values and b and not x.is_meta:
            lo, hi = (float(v) for v in torch.aminmax(x))  # one pass, not two
            _check(lo >= 0.0 and hi <= 1.0, f"image values must be in [0,1], got [{lo:.4g}, {hi:.4g}]")
        for name in ("mask", "object_mask", "depth"):
            t = getattr(self, name)
            if t is None:
                continue
            _check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor")
            _check(tuple(t.shape) == (b, 1, h, w), f"{name} must be [{b},1,{h},{w}], got {tuple(t.shape)}")
            _check(t.dtype == torch.float32, f"{name} must be float32, got {t.dtype}")
            if values and name != "depth" and b:
                _check(is_binary(t), f"{name} must be binary {{0,1}}")
        _check(len(self.label) == b, f"label has {len(self.label)} entries for {b} images")
        _check(len(self.meta) == b, f"meta has {len(self.meta)} entries for {b} images")
        if self.text is not None:
            _check(len(self.text) == b, f"text has {len(self.text)} entries for {b} images")
        for k, v in self.extras.items():
            _check(isinstance(v, torch.Tensor) and v.shape[:1] == (b,), f"extras[{k!r}] must have leading dim {b}")
        _check(isinstance(self.conditions, Conditions),
               f"conditions must be an anoplug.Conditions, got {type(self.conditions).__name__}")
        if self.conditions:
            self.conditions.validate(b, (h, w))
        return self

    def with_conditions(self, **conditions: Any) -> Batch:
        """This batch with per-sample conditions set (``target_mask=``, ``boxes=``, ``prompt=``, ...).

        A single prompt string is repeated for every sample; a ``[1,1,H,W]`` target mask is
        expanded; the result is validated, naming the field that is wrong.
        """
        if isinstance(conditions.get("prompt"), str):
            conditions["prompt"] = [conditions["prompt"]] * len(self)
        tm = conditions.get("target_mask")
        if isinstance(tm, torch.Tensor):
            tm = tm.float()
            tm = tm[:, None] if tm.ndim == 3 else tm
            conditions["target_mask"] = tm.expand(len(self), -1, -1, -1).contiguous() if tm.shape[0] == 1 else tm
        try:
            cond = self.conditions.replace(**conditions)
        except TypeError:
            from anoplug.conditions import CONDITION_NAMES

            bad = sorted(set(conditions) - set(CONDITION_NAMES))
            raise BatchError(f"unknown condition {bad[0]!r}; known: {', '.join(CONDITION_NAMES)}") from None
        cond.validate(len(self), self.size)
        return self._replace_trusted(conditions=cond)

    def keep_conditions(self, names: Sequence[str]) -> Batch:
        """This batch with only the conditions in ``names`` (what a member of a mixture reads)."""
        kept = self.conditions.replace(**{n: None for n in self.conditions.present() if n not in names})
        return self._replace_trusted(conditions=kept)

    @property
    def samples(self) -> Any:
        """The draw records of a generated batch (``meta[i]["sample"]``): pass to ``generate(samples=)`` to replay."""
        from anoplug.serial import Samples

        return Samples(m.get("sample") for m in self.meta)

    # -- basics -----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def is_anomalous(self) -> list[bool]:
        return [lab != GOOD for lab in self.label]

    def _map_tensors(self, fn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                out[f.name] = fn(v)
            elif f.name == "extras":
                out[f.name] = {k: fn(t) for k, t in v.items()}
        return out

    def __getitem__(self, idx: int | slice | Sequence[int]) -> Batch:
        """Select samples: ``batch[0]``, ``batch[2:5]``, ``batch[[0, 3]]`` (always a Batch)."""
        if isinstance(idx, int):
            idx = [idx]
        ids = list(range(len(self)))[idx] if isinstance(idx, slice) else list(idx)
        it = torch.as_tensor(ids, dtype=torch.long)
        kw = self._map_tensors(lambda t: t.index_select(0, it.to(t.device)))
        return Batch(
            label=[self.label[i] for i in ids],
            meta=[dict(self.meta[i]) for i in ids],
            text=None if self.text is None else [self.text[i] for i in ids],
            conditions=self.conditions.select(ids) if self.conditions else self.conditions,
            **kw,
        )

    def _replace_trusted(self, **changes: Any) -> Batch:
        """Copy with some fields replaced, skipping validation (inputs already valid)."""
        new = object.__new__(Batch)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def to(self, device: str | torch.device) -> Batch:
        if self.image.device == torch.device(device):
            return self
        return self._replace_trusted(**self._map_tensors(lambda t: t.to(device)), conditions=self.conditions.to(device))

    def clone(self) -> Batch:
        """A deep copy (tensors, labels, meta), cheap: the source is already valid."""
        kw = self._map_tensors(lambda t: t.clone())
        return self._replace_trusted(label=list(self.label), meta=[dict(m) for m in self.meta],
                                     text=None if self.text is None else list(self.text),
                                     conditions=self.conditions.clone(), **kw)

    @staticmethod
    def cat(batches: Sequence[Batch], *, common_extras: bool = False) -> Batch:
        """Concatenate batches; optional fields must be present in all or none.

        ``common_extras=True`` keeps only the ``extras`` every batch has (a mixture of
        methods, where one emits a soft mask and another does not), instead of raising.
        """
        if not batches:
            raise BatchError("cannot concatenate an empty list of batches")

        def cat_opt(name: str) -> torch.Tensor | None:
            vals = [getattr(b, name) for b in batches]
            if all(v is None for v in vals):
                return None
            _check(all(v is not None for v in vals), f"{name} present in some batches only")
            return torch.cat(vals)

        texts = [b.text for b in batches]
        _check(all(t is None for t in texts) or all(t is not None for t in texts), "text present in some batches only")
        keys = set(batches[0].extras)
        if common_extras:
            keys = keys.intersection(*(b.extras for b in batches))
        else:
            _check(all(set(b.extras) == keys for b in batches), "extras keys differ between batches")
        return Batch(
            image=torch.cat([b.image for b in batches]),
            mask=torch.cat([b.mask for b in batches]),
            label=[lab for b in batches for lab in b.label],
            meta=[m for b in batches for m in b.meta],
            object_mask=cat_opt("object_mask"),
            depth=cat_opt("depth"),
            text=None if texts[0] is None else [s for t in texts for s in t],
            extras={k: torch.cat([b.extras[k] for b in batches]) for k in keys},
            conditions=Conditions.cat([b.conditions for b in batches]),
        )

    # -- conversions --------------------------------------------------------------------
    @classmethod
    def from_numpy(cls, images: np.ndarray | Sequence[np.ndarray], masks: np.ndarray | Sequence[np.ndarray] | None = None,
                   **kw: Any) -> Batch:
        """From uint8 HWC images (a list or a [B,H,W,C] array); masks uint8 HW, nonzero = anomalous."""
        imgs = [np.asarray(i) for i in images] if not isinstance(images, np.ndarray) or images.ndim == 3 else list(images)
        if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] == 3:
            imgs = [images]
        for k, a in enumerate(imgs):
            if a.dtype != np.uint8:
                raise BatchError(f"image {k}: expected uint8, got {a.dtype}")
            if a.ndim == 2:
                imgs[k] = np.repeat(a[..., None], 3, axis=-1)
            elif a.ndim == 3 and a.shape[-1] == 4:
                imgs[k] = a[..., :3]
            elif not (a.ndim == 3 and a.shape[-1] == 3):
                raise BatchError(f"image {k}: expected HxWx3 uint8, got shape {a.shape}")
        shapes = {a.shape for a in imgs}
        if len(shapes) != 1:
            raise BatchError(f"images have different sizes: {sorted(shapes)}")
        image = from_uint8(np.stack(imgs))
        mask = None
        if masks is not None:
            ms = [np.asarray(m) for m in masks]
            ms = [m[..., 0] if m.ndim == 3 else m for m in ms]
            mask = torch.from_numpy((np.stack(ms) > 0).astype(np.float32))[:, None]
        return cls(image=image, mask=mask, **kw)

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [B,H,W,3], masks uint8 [B,H,W] in {0,255})."""
        return to_uint8(self.image), (to_uint8(self.mask)[..., 0])

    @classmethod
    def from_pil(cls, images: Sequence[Image.Image] | Image.Image, **kw: Any) -> Batch:
        if isinstance(images, Image.Image):
            images = [images]
        return cls.from_numpy([np.asarray(im.convert("RGB")) for im in images], **kw)

    def to_pil(self) -> list[Image.Image]:
        return [Image.fromarray(a) for a in to_uint8(self.image)]

    def mask_pil(self) -> list[Image.Image]:
        return [Image.fromarray(a[..., 0]) for a in to_uint8(self.mask)]

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], mask_paths: Sequence[str | Path | None] | None = None,
                   size: int | tuple[int, int] | None = None, **kw: Any) -> Batch:
        """Read image files (and optional mask files) by :func:`load_image`'s rules (``docs/image_input.md``).

        A mask must have its image's size; ``size`` then resizes both (bilinear / nearest).
        """
        hw = (size, size) if isinstance(size, int) else size
        imgs, masks = [], []
        for k, p in enumerate(paths):
            a = load_image(p)
            mp = mask_paths[k] if mask_paths is not None else None
            if mp is None:
                m = np.zeros(a.shape[:2], np.uint8)
            else:
                m = load_image(mp, mode="mask")
                if m.shape != a.shape[:2]:  # at the files' own sizes, before any resizing
                    raise BatchError(f"mask {mp} is {m.shape[1]}x{m.shape[0]} but image {p} is {a.shape[1]}x{a.shape[0]}")
            if hw is not None and a.shape[:2] != hw:
                a = np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), Image.BILINEAR))
                m = np.asarray(Image.fromarray(m).resize((hw[1], hw[0]), Image.NEAREST))
            imgs.append(a)
            masks.append(m)
        meta = kw.pop("meta", None) or [{"source": str(p)} for p in paths]
        return cls.from_numpy(imgs, masks, meta=meta, **kw)

    def save_png(self, directory: str | Path, stem: str = "img") -> list[Path]:
        """Write images (and non-empty masks as ``*_mask.png``); returns the image paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        out = []
        for i, (im, m) in enumerate(zip(self.to_pil(), self.mask_pil())):
            p = d / f"{stem}_{i:04d}.png"
            im.save(p)
            if self.label[i] != GOOD:
                m.save(d / f"{stem}_{i:04d}_mask.png")
            out.append(p)
        return out
