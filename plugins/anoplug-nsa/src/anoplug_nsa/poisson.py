"""Poisson image blending (Pérez et al. 2003) as OpenCV's ``seamlessClone`` does it, batched in torch.

OpenCV solves, on the bounding rectangle of the mask, the discrete Poisson equation
Δu = div v with u = destination on the rectangle's border, where the guidance field v is
the source gradient inside the (3× eroded) mask and the destination gradient outside it
(``NORMAL_CLONE``); ``MIXED_CLONE`` takes, inside the mask, whichever of source and
destination gradient has the larger |∂x − ∂y| (OpenCV's own criterion). The rectangle
problem is diagonal in the type-I discrete sine basis, so one solve is four small matrix
products. Gradients, erosion and right-hand sides of all patches of a call are computed
together on rectangles padded to the largest one; the sine transforms then run per patch
at its exact size (so a patch's result does not depend on the others in the call).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SINE_CACHE: dict[tuple[int, torch.dtype, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _sine_basis(n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal DST-I matrix of size n (symmetric, its own inverse) and the Laplacian eigenvalues."""
    key = (n, dtype, str(device))
    if key not in _SINE_CACHE:
        k = torch.arange(1, n + 1, dtype=torch.float64)
        s = math.sqrt(2.0 / (n + 1)) * torch.sin(math.pi * k[:, None] * k[None, :] / (n + 1))
        eig = 2.0 * torch.cos(math.pi * k / (n + 1)) - 2.0
        _SINE_CACHE[key] = (s.to(dtype=dtype, device=device), eig.to(dtype=dtype, device=device))
    return _SINE_CACHE[key]


def _grad_x(x: torch.Tensor) -> torch.Tensor:
    """Forward difference along x (OpenCV kernel [0, -1, 1]); the last column is never used."""
    return F.pad(x[..., 1:] - x[..., :-1], (0, 1))


def _grad_y(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))


def _div(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Backward differences (OpenCV kernel [-1, 1, 0]) summed: the discrete divergence."""
    return F.pad(gx[..., 1:] - gx[..., :-1], (1, 0)) + F.pad(gy[..., 1:, :] - gy[..., :-1, :], (0, 0, 1, 0))


def solve_rectangles(dst: torch.Tensor, src: torch.Tensor, mask: torch.Tensor, sizes: torch.Tensor,
                     mixed: torch.Tensor) -> torch.Tensor:
    """Blend padded rectangle problems: ``dst``/``src`` ``[P,C,Nh,Nw]`` (0..255), ``mask`` ``[P,1,Nh,Nw]``.

    ``sizes`` ``[P,2]`` are each rectangle's (h, w) (top-left aligned); ``src`` must already be
    zero outside the mask (as OpenCV copies it). Returns the unrounded float solution, written
    into ``dst`` (outside each rectangle's interior ``dst`` keeps its values).
    """
    P, C, Nh, Nw = dst.shape
    dev, dt = dst.device, dst.dtype
    hs, ws = sizes[:, 0], sizes[:, 1]
    rows = torch.arange(Nh, device=dev)[None, :, None]
    cols = torch.arange(Nw, device=dev)[None, None, :]
    inside = (rows < hs[:, None, None]) & (cols < ws[:, None, None])  # [P,Nh,Nw]
    interior = (rows >= 1) & (rows < hs[:, None, None] - 1) & (cols >= 1) & (cols < ws[:, None, None] - 1)
    # OpenCV erodes the mask 3 times with a 3x3 box (= one 7x7 min filter). The mask it erodes is a
    # view into the full mask, whose pixels around the bounding box are 0, so the rectangle's border
    # erodes too: zero padding.
    m = mask * inside[:, None]
    m = -F.max_pool2d(F.max_pool2d(-F.pad(m, (3, 3, 3, 3), value=0.0), (7, 1), stride=1), (1, 7), stride=1)

    sgx, sgy = _grad_x(src), _grad_y(src)
    dgx, dgy = _grad_x(dst), _grad_y(dst)
    if bool(mixed.any()):
        take_dst = (sgx - sgy).abs() <= (dgx - dgy).abs()
        take_dst = take_dst & mixed[:, None, None, None]
        sgx, sgy = torch.where(take_dst, dgx, sgx), torch.where(take_dst, dgy, sgy)
    gx = sgx * m + dgx * (1 - m)
    gy = sgy * m + dgy * (1 - m)
    lap = _div(gx, gy)

    ring = dst * (inside & ~interior)[:, None]  # Dirichlet values; interior and padding zero
    nb = F.pad(ring, (1, 1, 1, 1))
    neighbours = nb[..., :-2, 1:-1] + nb[..., 2:, 1:-1] + nb[..., 1:-1, :-2] + nb[..., 1:-1, 2:]
    rhs = (lap - neighbours) * interior[:, None]
    rhs = rhs[..., 1:Nh - 1, 1:Nw - 1]

    # one exact-size sine solve per rectangle: the result of a patch never depends on the
    # other patches of the call (padding would change BLAS blocking and hence the last bits)
    u = torch.zeros_like(rhs)
    for p in range(P):
        mh, mw = int(hs[p]) - 2, int(ws[p]) - 2
        if mh <= 0 or mw <= 0:
            continue
        sh, eh = _sine_basis(mh, dt, dev)
        sw, ew = _sine_basis(mw, dt, dev)
        coef = sh @ rhs[p, :, :mh, :mw].contiguous() @ sw  # same memory layout whatever the padding
        u[p, :, :mh, :mw] = sh @ (coef / (eh[:, None] + ew[None, :])) @ sw
    core = dst[..., 1:Nh - 1, 1:Nw - 1]
    core.copy_(torch.where(interior[:, None, 1:Nh - 1, 1:Nw - 1], u, core))
    return dst


@dataclass
class CloneJob:
    """One ``seamlessClone(src, dst=images[index], mask, center)`` call."""

    index: int  # which image of the batch receives the patch
    patch: torch.Tensor  # [C,h,w] source patch, 0..255
    mask: torch.Tensor  # [h,w] bool, same size as the patch
    center: tuple[int, int]  # (x, y) in the destination, OpenCV's convention


def _mask_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    rows = mask.any(1).nonzero()
    if rows.numel() == 0:
        return None
    cols = mask.any(0).nonzero()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def seamless_clone(images: torch.Tensor, jobs: Sequence[CloneJob], mixed: Sequence[bool]) -> list[bool]:
    """Apply ``jobs`` (each to a different image) to ``images`` ``[B,C,H,W]`` (0..255) in place.

    Follows OpenCV's ``seamlessClone`` geometry: the mask's outer pixel ring is cleared, the
    problem lives on the mask's bounding box, placed so that ``center`` is its middle.
    The result is truncated to whole grey levels (as OpenCV's solver does). Returns, per
    job, whether it was applied (an empty mask or a rectangle leaving the image is skipped).
    """
    prepared, done = [], []
    for job in jobs:
        mask = job.mask.clone()
        mask[0, :] = mask[-1, :] = False
        mask[:, 0] = mask[:, -1] = False
        box = _mask_box(mask)
        if box is None:
            done.append(False)
            continue
        y0, y1, x0, x1 = box
        h, w = y1 - y0, x1 - x0
        dy, dx = job.center[1] - h // 2, job.center[0] - w // 2
        H, W = images.shape[-2:]
        if dy < 0 or dx < 0 or dy + h > H or dx + w > W:  # OpenCV raises; NSA then skips the patch
            done.append(False)
            continue
        m = mask[y0:y1, x0:x1]
        prepared.append((job.index, dy, dx, h, w, job.patch[:, y0:y1, x0:x1] * m, m))
        done.append(True)
    if not prepared:
        return done
    Nh = max(p[3] for p in prepared)
    Nw = max(p[4] for p in prepared)
    P, C = len(prepared), images.shape[1]
    dst = torch.zeros(P, C, Nh, Nw, dtype=images.dtype, device=images.device)
    src = torch.zeros_like(dst)
    msk = torch.zeros(P, 1, Nh, Nw, dtype=images.dtype, device=images.device)
    for p, (b, dy, dx, h, w, patch, m) in enumerate(prepared):
        dst[p, :, :h, :w] = images[b, :, dy:dy + h, dx:dx + w]
        src[p, :, :h, :w] = patch
        msk[p, 0, :h, :w] = m
    sizes = torch.tensor([[p[3], p[4]] for p in prepared], device=images.device)
    mixed_t = torch.tensor([bool(mx) for mx, d in zip(mixed, done) if d], device=images.device)
    out = solve_rectangles(dst, src, msk, sizes, mixed_t)
    out = out.clamp(0, 255).floor()  # OpenCV truncates, it does not round
    for p, (b, dy, dx, h, w, _, _) in enumerate(prepared):
        images[b, :, dy:dy + h, dx:dx + w] = out[p, :, :h, :w]
    return done
