"""FractalAD's colour changes, on 8-bit levels as the PIL pipeline of the official code.

The official ``FAG`` works on PIL images, so every step returns 8-bit values. Here images are
float tensors holding levels 0..255 (``[n, 3, H, W]``), and each operation ends on whole levels:

- torchvision's ``ColorJitter`` on a PIL image calls PIL's ``ImageEnhance``: brightness, contrast
  and saturation are ``Image.blend(degenerate, image, f) = d + f·(v − d)`` truncated to 0..255,
  with ``d`` = black, the image's mean luma rounded to a whole level, and each pixel's luma
  (PIL's ``L`` conversion, ``(19595 R + 38470 G + 7471 B + 2¹⁵) >> 16``). The four operations run
  in a random order per call (``torch.randperm(4)``), each with its own factor.
- hue goes through PIL's 8-bit HSV (``convert("HSV")``): ``np.int32(255·h)`` wrapped to uint8 is
  added to the 0..255 hue channel (wrapping), and the result converted back. :func:`rgb_to_hsv`
  and :func:`hsv_to_rgb` re-express PIL's ``rgb2hsv_row``/``hsv2rgb`` arithmetic (single-precision
  intermediates, C ``round``), so the four operations equal torchvision's PIL path exactly (tested).
- ``ChangeColor`` multiplies two channels (drawn with replacement) by ``U(0, 1)·2`` and casts
  with ``np.uint8``, which truncates and wraps modulo 256 (so bright values overflow to dark).
"""

from __future__ import annotations

import torch

__all__ = ["OPS", "luma", "rgb_to_hsv", "hsv_to_rgb", "jitter", "change_color"]

OPS = ("brightness", "contrast", "saturation", "hue")


def luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` of 8-bit RGB levels ``[n, 3, H, W]`` → ``[n, 1, H, W]`` whole levels."""
    r, g, b = (x[:, c:c + 1].to(torch.int64) for c in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).to(x.dtype)


_F32, _F64 = torch.float32, torch.float64


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PIL's RGB → HSV of 8-bit levels ``[..., 3, H, W]`` (int64): hue and saturation on 0..255."""
    r, g, b = x.to(torch.int64).unbind(-3)
    mx = torch.maximum(torch.maximum(r, g), b)
    mn = torch.minimum(torch.minimum(r, g), b)
    cr = (mx - mn).to(_F32)
    safe = torch.where(cr > 0, cr, torch.ones_like(cr))
    s = cr / torch.where(mx > 0, mx, torch.ones_like(mx)).to(_F32)
    rc, gc, bc = ((mx - c).to(_F32) / safe for c in (r, g, b))
    h = torch.where(r == mx, bc - gc, torch.where(g == mx, (2.0 + rc.double() - bc.double()).to(_F32),
                                                  (4.0 + gc.double() - rc.double()).to(_F32)))
    h = torch.fmod(h.double() / 6.0 + 1.0, 1.0).to(_F32)
    grey = mx == mn
    uh = (h.double() * 255.0).trunc().clamp(0, 255).to(torch.int64)
    us = (s.double() * 255.0).trunc().clamp(0, 255).to(torch.int64)
    return uh.masked_fill(grey, 0), us.masked_fill(grey, 0), mx


def _c_round(v: torch.Tensor) -> torch.Tensor:
    """C ``round``: halves away from zero."""
    return torch.where(v >= 0, torch.floor(v + 0.5), torch.ceil(v - 0.5))


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PIL's HSV → RGB of 8-bit channels (int64) → ``[..., 3, H, W]`` int64 levels."""
    hd = h.to(_F32).double() * 6.0 / 255.0
    i = torch.floor(hd)
    f = (hd - i).to(_F32)
    vd, sd = v.double(), s.double()
    p = _c_round(vd * (1.0 - sd / 255.0)).clamp(0, 255).to(torch.int64)
    q = _c_round(vd * (1.0 - (f * s.to(_F32)).double() / 255.0)).clamp(0, 255).to(torch.int64)
    t = _c_round(vd * (1.0 - (1.0 - f.double()) * sd / 255.0)).clamp(0, 255).to(torch.int64)
    sector = i.to(torch.int64) % 6
    candidates = torch.stack((v, t, p, q))  # PIL's six cases pick, per channel, one of v, t, p, q
    pick = _SECTOR_PICK[sector]  # [..., H, W, 3]
    out = torch.gather(candidates, 0, pick.movedim(-1, 0))  # [3, ..., H, W]
    return torch.where(s == 0, v, out).movedim(0, -3)


#: per hue sector, which of (v, t, p, q) becomes R, G and B (PIL's hsv2rgb switch)
_SECTOR_PICK = torch.tensor([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's PIL ``adjust_hue``: add ``uint8(int32(255·h))`` to PIL's hue channel, wrapping."""
    h, s, v = rgb_to_hsv(x)
    steps = torch.remainder(torch.trunc(f[:, 0] * 255.0).to(torch.int64), 256)  # [n, 1, 1]
    return hsv_to_rgb(torch.remainder(h + steps, 256), s, v).to(x.dtype)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, x, f)`` on 8-bit values: ``d + f·(x − d)`` truncated, clipped."""
    return (degenerate + f * (x - degenerate)).floor_().clamp_(0, 255)


def _apply(op: int, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """One ``ColorJitter`` operation on ``[n, 3, H, W]`` levels with per-sample factors ``f`` ``[n, 1, 1, 1]``."""
    if op == 0:  # brightness: blend with black
        return _blend(torch.zeros_like(x), x, f)
    if op == 1:  # contrast: blend with the mean luma, rounded to a whole level (ImageStat mean + 0.5, int)
        mean = (luma(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor_()
        return _blend(mean.expand_as(x), x, f)
    if op == 2:  # saturation: blend with each pixel's luma
        return _blend(luma(x).expand_as(x), x, f)
    return _hue(x, f)


def jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, active: tuple[bool, ...]) -> torch.Tensor:
    """torchvision ``ColorJitter`` per sample: ``factors`` ``[n, 4]`` (brightness, contrast, saturation
    multipliers, hue shift), ``order`` ``[n, 4]`` a permutation of the four per sample, ``active``
    which operations the jitter has (a ``ColorJitter(brightness=1, contrast=1)`` has only the first two).

    At every step the samples that apply the same operation run together.
    """
    out = x.clone()
    for step in range(4):
        for op in range(4):
            if not active[op]:
                continue
            idx = (order[:, step] == op).nonzero().flatten()
            if idx.numel() == 0:
                continue
            f = factors[idx, op].to(x.dtype).reshape(-1, 1, 1, 1)
            out[idx] = _apply(op, out[idx], f)
    return out


def change_color(x: torch.Tensor, channels: list[int], draws: list[float]) -> torch.Tensor:
    """FractalAD's ``ChangeColor`` on one image ``[3, H, W]`` of levels: ``channel ← uint8(channel·r·2)``.

    ``r ~ U(0, 1)`` per drawn channel, applied in turn (the same channel twice compounds); the
    cast truncates and wraps modulo 256, as ``np.uint8`` of a float array does on x86.
    """
    out = x.clone()
    for c, r in zip(channels, draws):
        out[c] = torch.remainder(torch.trunc(out[c].to(torch.float64) * r * 2), 256).to(x.dtype)
    return out
