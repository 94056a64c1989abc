"""DRAEM's ten texture augmenters, batched in torch with per-sample parameters.

The original draws 3 of these imgaug augmenters without replacement and applies them in
the drawn order to the anomaly-source texture (``data_loader.py``). Each function here
takes a float ``[n,3,H,W]`` batch in [0,1] and the per-sample parameters ``p`` (a tensor
with one row per sample) and reproduces the imgaug/PIL operation on the 0–255 scale.
"""

from __future__ import annotations

import torch

from anoplug.noise import rotate

NAMES = ("gamma", "brightness", "sharpness", "hue_saturation", "solarize", "posterize", "invert",
         "autocontrast", "equalize", "rotate")


def sample_params(name: str, rng: torch.Generator) -> list[float]:
    """Draw one augmenter's parameters with the ranges of DRAEM's code (imgaug defaults elsewhere)."""
    u = lambda lo, hi, n=1: (lo + (hi - lo) * torch.rand(n, generator=rng)).tolist()
    if name == "gamma":  # GammaContrast((0.5, 2.0), per_channel=True)
        return u(0.5, 2.0, 3)
    if name == "brightness":  # MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))
        return u(0.8, 1.2) + u(-30.0, 30.0)
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
    if name == "rotate":  # Affine(rotate=(-45, 45)), constant fill 0
        return u(-45.0, 45.0)
    raise ValueError(f"unknown augmenter {name!r}")


def _to255(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).round()


def gamma(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return x.pow(p[:, :, None, None])


_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def brightness(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Multiply and add on the luma channel (imgaug works in YCrCb), chroma untouched."""
    m = _RGB2YCC.to(x)
    ycc = torch.einsum("ij,bjhw->bihw", m, x)
    y = ycc[:, :1] * p[:, 0, None, None, None] + p[:, 1, None, None, None] / 255.0
    ycc = torch.cat([y, ycc[:, 1:]], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), ycc).clamp(0, 1)


def sharpness(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (3×3 ones, centre 5, /13), borders kept.

    The 3×3 box sum is computed separably with shifted adds, much cheaper than a conv on CPU.
    """
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = (box + 4 * x[..., 1:-1, 1:-1]) / 13
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = _to255(smooth) / 255.0
    f = p[:, 0, None, None, None]
    return (degenerate + f * (x - degenerate)).clamp(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    mx, _ = x.max(1)
    mn, _ = x.min(1)
    d = mx - mn
    safe = torch.where(d > 0, d, torch.ones_like(d))
    h = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(d > 0, h / 6.0, torch.zeros_like(h))
    s = torch.where(mx > 0, d / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    return torch.stack([h, s, mx], 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    k = (torch.tensor([5.0, 3.0, 1.0], device=hsv.device)[None, :, None, None] + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def hue_saturation(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Add to hue (imgaug's ±255 spans the full hue circle) and saturation (0–255 scale)."""
    hsv = _rgb_to_hsv(x)
    h = (hsv[:, 0] + p[:, 0, None, None] / 255.0) % 1.0
    s = (hsv[:, 1] + p[:, 1, None, None] / 255.0).clamp(0, 1)
    return _hsv_to_rgb(torch.stack([h, s, hsv[:, 2]], 1)).clamp(0, 1)


def solarize(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    active = p[:, 0, None, None, None] > 0.5
    v = _to255(x)
    inv = torch.where(v >= p[:, 1, None, None, None], 255.0 - v, v) / 255.0
    return torch.where(active, inv, x)


def posterize(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    step = torch.pow(2.0, 8 - p[:, 0])[:, None, None, None]
    return (torch.floor(_to255(x) / step) * step) / 255.0


def invert(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def _histograms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 values ``[n*c, H*W]`` as long, their 256-bin histograms ``[n*c, 256]``)."""
    v = _to255(x).long().reshape(x.shape[0] * x.shape[1], -1)
    hist = torch.zeros(v.shape[0], 256, dtype=torch.long, device=x.device).scatter_add_(1, v, torch.ones_like(v))
    return v, hist


def autocontrast(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.autocontrast per channel: cut ``cutoff`` % of pixels at each end, stretch to 0–255."""
    n, c = x.shape[:2]
    v, hist = _histograms(x)
    total = hist.sum(1, keepdim=True)
    cut = (total * p[:, 0].long().repeat_interleave(c)[:, None]) // 100  # PIL: n * cutoff // 100
    cdf = torch.cumsum(hist, 1)
    lo = torch.searchsorted(cdf, cut, right=True)  # first bin whose count exceeds the cut
    hi = 255 - torch.searchsorted(torch.cumsum(hist.flip(1), 1), cut, right=True)
    ok = hi > lo
    scale = 255.0 / torch.where(ok, hi - lo, torch.ones_like(hi)).double()
    ix = torch.arange(256, device=x.device, dtype=torch.float64)[None, :]
    lut = (ix * scale - lo * scale).trunc().clamp(0, 255).float()  # PIL: int(ix * scale + offset)
    lut = torch.where(ok, lut, torch.arange(256, device=x.device, dtype=torch.float32)[None, :])
    return (lut.gather(1, v) / 255.0).reshape(x.shape)


def equalize(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.equalize per channel (same step rule and lookup table)."""
    v, hist = _histograms(x)
    nz = hist > 0
    last = 255 - nz.flip(1).long().argmax(1)  # index of the last non-empty bin
    step = (hist.sum(1) - hist.gather(1, last[:, None])[:, 0]) // 255
    ok = (nz.sum(1) > 1) & (step > 0)
    safe = torch.where(ok, step, torch.ones_like(step))[:, None]
    excl = torch.cumsum(hist, 1) - hist
    lut = ((safe // 2 + excl) // safe).clamp(max=255)
    out = torch.where(ok[:, None], lut.gather(1, v), v)
    return (out.float() / 255.0).reshape(x.shape)


def rotate_texture(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return rotate(x, p[:, 0])


FUNCS = {"gamma": gamma, "brightness": brightness, "sharpness": sharpness, "hue_saturation": hue_saturation,
         "solarize": solarize, "posterize": posterize, "invert": invert, "autocontrast": autocontrast,
         "equalize": equalize, "rotate": rotate_texture}
assert set(FUNCS) == set(NAMES)


def apply_chains(textures: torch.Tensor, chains: list[list[tuple[str, list[float]]]]) -> torch.Tensor:
    """Apply each sample's augmenter chain in place; samples sharing an augmenter at a step run together.

    Every augmenter maps [0,1] to [0,1], so no clamping is needed between steps.
    """
    out = textures
    depth = max((len(c) for c in chains), default=0)
    for step in range(depth):
        for name in NAMES:
            idx = [i for i, c in enumerate(chains) if len(c) > step and c[step][0] == name]
            if not idx:
                continue
            params = torch.tensor([chains[i][step][1] for i in idx], dtype=out.dtype).reshape(len(idx), -1)
            out[idx] = FUNCS[name](out[idx], params)
    return out
