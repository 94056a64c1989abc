"""DRAEM's ten texture augmenters on uint8 textures, batched, with per-sample parameters.

Shared by every method that augments its anomaly sources as DRAEM's code does (DRAEM, MemSeg's
structure source, ASBench's pipeline copies), so it lives in the host. ``brightness`` needs
OpenCV (``opencv-python-headless``), imported when it runs.

The original draws 3 of these imgaug augmenters without replacement and applies them in the
drawn order to a uint8 texture (``data_loader.py``); imgaug returns uint8 after every step.
So do we:

- six are per-channel *point maps* 0..255 → 0..255 (gamma, solarize, posterize, invert,
  autocontrast, equalize). Each is a 256-entry table; autocontrast and equalize build theirs
  from the current histogram, as PIL does. A run of point maps in a chain composes into one
  table (the histogram after the first maps is the input histogram pushed through their
  tables), so the pixels are looked up once per run, however long it is;
- four need the pixels themselves (hue/saturation in HSV, sharpness, rotation: computed in float
  from the uint8 values and rounded back to uint8; brightness through OpenCV's 8-bit colour
  conversions in one of imgaug's six colour spaces drawn per image, as imgaug does).

Every function takes uint8 ``[n,3,H,W]`` and the per-sample parameters ``p`` (one row per sample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from anoplug.noise import rotate
from anoplug.ops import hsv_adjust

NAMES = ("gamma", "brightness", "sharpness", "hue_saturation", "solarize", "posterize", "invert",
         "autocontrast", "equalize", "rotate")
POINT_MAPS = ("gamma", "solarize", "posterize", "invert", "autocontrast", "equalize")
_NEEDS_HISTOGRAM = ("autocontrast", "equalize")


def sample_params(name: str, rng: torch.Generator) -> list[float]:
    """Draw one augmenter's parameters with the ranges of DRAEM's code (imgaug defaults elsewhere)."""
    u = lambda lo, hi, n=1: (lo + (hi - lo) * torch.rand(n, generator=rng)).tolist()
    if name == "gamma":  # GammaContrast((0.5, 2.0), per_channel=True)
        return u(0.5, 2.0, 3)
    if name == "brightness":  # MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)): imgaug also draws
        # the colour space (one of six, uniformly) and the order of multiply and add per image
        return (u(0.8, 1.2) + u(-30.0, 30.0) + [float(torch.randint(len(BRIGHTNESS_SPACES), (1,), generator=rng))]
                + [float(torch.rand(1, generator=rng) < 0.5)])
    if name == "sharpness":  # pillike.EnhanceSharpness(), imgaug default factor (0, 2)
        return u(0.0, 2.0)
    if name == "hue_saturation":  # AddToHueAndSaturation((-50, 50), per_channel=True)
        return [float(v) for v in torch.randint(-50, 51, (2,), generator=rng)]
    if name == "solarize":  # Solarize(0.5, threshold=(32, 128))
        return [float(torch.rand(1, generator=rng) < 0.5)] + u(32.0, 128.0)
    if name == "posterize":  # Posterize(), imgaug default nb_bits (1, 8)
        return [float(torch.randint(1, 9, (1,), generator=rng))]
    if name == "invert":  # Invert(), imgaug default p=1
        return []
    if name == "autocontrast":  # pillike.Autocontrast(), imgaug default cutoff (0, 20) percent
        return [float(torch.randint(0, 21, (1,), generator=rng))]
    if name == "equalize":  # pillike.Equalize()
        return []
    if name == "rotate":  # Affine(rotate=(-45, 45)), bilinear, constant fill 0
        return u(-45.0, 45.0)
    raise ValueError(f"unknown augmenter {name!r}")


# -- point maps: 256-entry tables ----------------------------------------------------------------
# Each takes the current histograms ``[n,3,256]`` (None where not needed) and ``p`` and returns
# the table ``[n,3,256]`` (int64, values 0..255).

_LEVELS = torch.arange(256)


def _gamma_table(hist: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
    """imgaug (uint8): ``255 · (i/255)^γ`` in float32, clipped, truncated to uint8; γ per channel."""
    lin = torch.linspace(0.0, 1.0, 256, dtype=torch.float32)
    return (lin.pow(p[:, :, None].float()) * 255.0).clamp(0, 255).long()


def _solarize_table(hist: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
    """imgaug Solarize: values ≥ threshold are inverted, in half of the samples (p[:,0] flags them)."""
    flip = (p[:, :1] > 0.5) & (_LEVELS[None, :] >= p[:, 1:2])
    return torch.where(flip, 255 - _LEVELS, _LEVELS)[:, None, :].expand(-1, 3, -1)


def _posterize_table(hist: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` most significant bits (imgaug's uniform quantisation to n bits)."""
    step = (2 ** (8 - p[:, 0].long()))[:, None]
    return ((_LEVELS[None, :] // step) * step)[:, None, :].expand(-1, 3, -1)


def _invert_table(hist: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
    return (255 - _LEVELS).expand(len(p), 3, -1)


def _autocontrast_table(hist: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.autocontrast per channel: cut ``cutoff`` % of pixels at each end, stretch to 0–255."""
    n = hist.shape[0]
    h = hist.reshape(n * 3, 256)
    total = h.sum(1, keepdim=True)
    cut = (total * p[:, 0].long().repeat_interleave(3)[:, None]) // 100  # PIL: n * cutoff // 100
    lo = torch.searchsorted(torch.cumsum(h, 1), cut, right=True)  # first bin whose count exceeds the cut
    hi = 255 - torch.searchsorted(torch.cumsum(h.flip(1), 1), cut, right=True)
    ok = hi > lo
    scale = 255.0 / torch.where(ok, hi - lo, torch.ones_like(hi)).double()
    lut = (_LEVELS[None, :].double() * scale - lo * scale).trunc().clamp(0, 255).long()  # PIL: int(i*scale+offset)
    return torch.where(ok, lut, _LEVELS[None, :]).reshape(n, 3, 256)


def _equalize_table(hist: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.equalize per channel (same step rule and lookup table)."""
    n = hist.shape[0]
    h = hist.reshape(n * 3, 256)
    nz = h > 0
    last = 255 - nz.flip(1).long().argmax(1)  # index of the last non-empty bin
    step = (h.sum(1) - h.gather(1, last[:, None])[:, 0]) // 255
    ok = (nz.sum(1) > 1) & (step > 0)
    safe = torch.where(ok, step, torch.ones_like(step))[:, None]
    lut = ((safe // 2 + torch.cumsum(h, 1) - h) // safe).clamp(max=255)
    return torch.where(ok[:, None], lut, _LEVELS[None, :]).reshape(n, 3, 256)


TABLES: dict[str, Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]] = {
    "gamma": _gamma_table, "solarize": _solarize_table, "posterize": _posterize_table, "invert": _invert_table,
    "autocontrast": _autocontrast_table, "equalize": _equalize_table}


def histograms(x: torch.Tensor) -> torch.Tensor:
    """256-bin histogram of every channel of uint8 ``[n,3,H,W]``: ``[n,3,256]`` int64."""
    planes = x.reshape(x.shape[0] * x.shape[1], -1)
    return torch.stack([torch.bincount(pl, minlength=256) for pl in planes]).reshape(*x.shape[:2], 256)


def compose_tables(hist: torch.Tensor | None, run: Sequence[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """One table ``[n,3,256]`` for a run of point maps applied in order (``hist``: of the run's input)."""
    table = None
    for name, p in run:
        cur = None
        if name in _NEEDS_HISTOGRAM:  # the histogram of the intermediate image, from the tables so far
            cur = hist if table is None else torch.zeros_like(hist).scatter_add_(2, table, hist)
        t = TABLES[name](cur, p)
        table = t if table is None else t.gather(2, table)
    assert table is not None, "empty run of point maps"
    return table


def apply_tables(x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Look every pixel of uint8 ``[n,3,H,W]`` up in its channel's table (in place; returns ``x``).

    ``numpy.take`` with uint8 indices into a 256-entry uint8 table is a tight C loop; torch's
    gather would first widen every index to int64 (measured 6× slower).
    """
    xs = x.numpy()
    ts = tables.to(torch.uint8).numpy()
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            xs[i, c] = np.take(ts[i, c], xs[i, c])
    return x


def point_map(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A single point map as an image function (uint8 in, uint8 out) — the chain runs compose them."""
    def fn(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        hist = histograms(x) if name in _NEEDS_HISTOGRAM else None
        return apply_tables(x.clone(), compose_tables(hist, [(name, p)]))
    fn.__name__ = name
    return fn


# -- augmenters that need the pixels --------------------------------------------------------------
def _to_u8(f: torch.Tensor) -> torch.Tensor:
    """0–255 float → uint8, rounded and clipped (imgaug's restore to uint8)."""
    return f.round_().clamp_(0, 255).to(torch.uint8)


#: imgaug's ``WithBrightnessChannels`` colour spaces (OpenCV 8-bit conversions from RGB and back) and
#: the index of the brightness channel in each
BRIGHTNESS_SPACES: tuple[tuple[str, int], ...] = (("YCrCb", 0), ("HSV", 2), ("HLS", 1), ("Lab", 0), ("Luv", 0),
                                                   ("YUV", 0))
_TO_SPACE = {"YCrCb": "COLOR_RGB2YCrCb", "HSV": "COLOR_RGB2HSV", "HLS": "COLOR_RGB2HLS", "Lab": "COLOR_RGB2Lab",
             "Luv": "COLOR_RGB2Luv", "YUV": "COLOR_RGB2YUV"}
_FROM_SPACE = {"YCrCb": "COLOR_YCrCb2RGB", "HSV": "COLOR_HSV2RGB", "HLS": "COLOR_HLS2RGB", "Lab": "COLOR_Lab2RGB",
               "Luv": "COLOR_Luv2RGB", "YUV": "COLOR_YUV2RGB"}
_LUT_PIXELS = 224 * 224 * 3  # imgaug multiplies uint8 by a table (truncating) from this size on, else cv2 (rounding)


def _multiply_channel(c: np.ndarray, mul: float) -> np.ndarray:
    """imgaug's ``multiply_scalar_`` on a uint8 channel: ``cv2.multiply`` (rounded, saturated) or, for large
    images, a float32 table truncated to uint8."""
    import cv2

    if c.size >= _LUT_PIXELS:
        table = np.clip(np.arange(256, dtype=np.float32) * np.float32(mul), 0, 255).astype(np.uint8)
        return table[c]
    return cv2.multiply(c, np.full(c.shape, mul, dtype=np.float32), dtype=cv2.CV_8U)


def _add_channel(c: np.ndarray, add: float) -> np.ndarray:
    """imgaug's ``add_scalar_`` on uint8: the value rounded half to even, then a saturated ``cv2.add``."""
    import cv2

    return cv2.add(c, np.full(c.shape, round(add), dtype=np.float64), dtype=cv2.CV_8U)


def brightness(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """imgaug ``MultiplyAndAddToBrightness``: per image, to a drawn colour space, multiply and add the
    brightness channel in a drawn order, back to RGB — all 8-bit OpenCV conversions, as imgaug does.

    ``p`` per sample: (mul, add, colour-space index into :data:`BRIGHTNESS_SPACES`, add first?).
    One image at a time: OpenCV's conversions take one image (each about 0.1 ms at 256²).
    """
    import cv2

    out = torch.empty_like(x)
    for i in range(len(x)):
        mul, add, space, add_first = (float(v) for v in p[i, :4])
        name, ch = BRIGHTNESS_SPACES[int(space)]
        img = np.ascontiguousarray(x[i].permute(1, 2, 0).numpy())
        cvt = cv2.cvtColor(img, getattr(cv2, _TO_SPACE[name]))
        c = np.ascontiguousarray(cvt[:, :, ch])
        c = _multiply_channel(_add_channel(c, add), mul) if add_first > 0.5 else _add_channel(_multiply_channel(c, mul), add)
        cvt[:, :, ch] = c.reshape(cvt.shape[:2])
        back = cv2.cvtColor(cvt, getattr(cv2, _FROM_SPACE[name]))
        out[i] = torch.from_numpy(back).permute(2, 0, 1)
    return out


def sharpness(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (3×3 ones, centre 5, /13), borders kept.

    The 3×3 box sum is computed separably with shifted adds, much cheaper than a conv on CPU.
    """
    f = x.float()
    rows = f[..., :-2, :] + f[..., 1:-1, :] + f[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    degenerate = f.clone()
    degenerate[..., 1:-1, 1:-1] = box.add_(f[..., 1:-1, 1:-1], alpha=4).div_(13).round_()
    return _to_u8(torch.lerp(degenerate, f, p[:, 0, None, None, None]))


def hue_saturation(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Add to hue (imgaug's ±255 spans the full hue circle) and saturation (0–255 scale) in HSV."""
    f = x.float()
    return _to_u8(hsv_adjust(f, p[:, 0, None, None, None] / 255.0, p[:, 1, None, None, None] / 255.0, dim=1, out=f))


def rotate_texture(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """imgaug Affine(rotate): bilinear about the centre, constant fill 0."""
    return _to_u8(rotate(x.float(), p[:, 0]))


FUNCS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": brightness, "sharpness": sharpness, "hue_saturation": hue_saturation, "rotate": rotate_texture,
    **{name: point_map(name) for name in POINT_MAPS}}
assert set(FUNCS) == set(NAMES)


def _stages(chain: Sequence[tuple[str, list[float]]]) -> list[tuple[str, list[tuple[str, list[float]]]]]:
    """Split a chain into stages: a run of consecutive point maps is one ``"points"`` stage."""
    stages: list[tuple[str, list[tuple[str, list[float]]]]] = []
    for name, params in chain:
        if name in POINT_MAPS and stages and stages[-1][0] == "points":
            stages[-1][1].append((name, params))
        else:
            stages.append(("points" if name in POINT_MAPS else name, [(name, params)]))
    return stages


def apply_chains(textures: torch.Tensor, chains: Sequence[Sequence[tuple[str, list[float]]]]) -> torch.Tensor:
    """Apply each sample's augmenter chain to uint8 ``[n,3,H,W]`` textures (in place; returns them).

    Stage by stage, samples whose stage is the same pixel augmenter run together; a run of
    point maps becomes one composed table per sample and one lookup.
    """
    if textures.dtype != torch.uint8:
        raise TypeError(f"apply_chains expects uint8 textures, got {textures.dtype}")
    out = textures
    staged = [_stages(c) for c in chains]
    for step in range(max((len(s) for s in staged), default=0)):
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(staged):
            if len(s) > step:
                groups.setdefault(s[step][0], []).append(i)
        for kind, idx in groups.items():
            if kind == "points":
                for i in idx:
                    run = [(name, torch.tensor([params], dtype=torch.float32)) for name, params in staged[i][step][1]]
                    needs = any(name in _NEEDS_HISTOGRAM for name, _ in run)
                    table = compose_tables(histograms(out[i:i + 1]) if needs else None, run)
                    apply_tables(out[i:i + 1], table)
            else:
                params = torch.tensor([staged[i][step][1][0][1] for i in idx], dtype=torch.float32).reshape(len(idx), -1)
                result = FUNCS[kind](torch.stack([out[i] for i in idx]), params)
                for j, i in enumerate(idx):  # plain copies: index_copy_ on CPU measured 5x slower
                    out[i] = result[j]
    return out
