"""Iterated function systems (IFS) for fractal masks, as FractalAD and ASBench draw and render them.

FractalAD (and ASBench, which vendors it) take the IFS code of Anderson & Farrell's
"fractal pre-training" package: ``sample_system(2)`` draws two random contractive affine
maps, ``iterate(system, 100000)`` runs the chaos game, ``render(points, s, binary=True,
patch=True)`` rasterises the points into an ``s × s`` binary image with a random 3×3 stamp.
The laws, re-expressed here (official file ``fractals/ifs.py``, identical in both repositories):

- **maps** (``sample_system``): each map is ``A = U·diag(σ₁, σ₂)·V`` plus a translation
  ``t ~ U(−1, 1)²``. ``U`` and ``V`` are rotations by ``U(−π, π)`` of a diagonal ±1 matrix
  (signs by coin flips); the singular values satisfy ``Σ (σ₁ + 2σ₂) = a`` with
  ``a ~ U((5+n)/2, (6+n)/2)`` and are drawn pair by pair (``sample_svs``, below).
- **chaos game** (``iterate``): start at the fixed point of map 0, then at every step pick map
  ``k`` with probability ∝ ``|det A_k|`` and apply it; every visited point is kept.
- **render**: the points' bounding box is scaled onto ``s × s`` pixels (``row = ⌊(x − x_min)·(s−1)/x_span⌋``,
  ``col`` from ``y`` alike); every hit pixel is stamped with a random subset of its 3×3
  neighbourhood (each of the 9 offsets kept with probability ½, once per render).

The chaos game is a sequential recurrence. Here it runs for a whole batch at once in two
levels: the sequence is cut into ``≈√N`` blocks; the maps of each block are composed
(``√N`` vectorised steps), the block start points follow (``√N`` steps), and the points inside
every block are then iterated in parallel (``√N`` steps) with the same arithmetic as the official
loop. So ``N = 100 000`` costs ``≈ 950`` small tensor steps for the whole batch instead of
``100 000`` per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["sample_singular_values", "sample_system", "map_probabilities", "chaos_game", "render_binary",
           "sample_stamp"]

_F64 = torch.float64


def _uniform(rng: torch.Generator, lo: float, hi: float) -> float:
    """``lo + (hi − lo)·u`` (numpy's ``uniform``, which also accepts ``hi < lo``)."""
    return lo + (hi - lo) * float(torch.rand(1, generator=rng, dtype=_F64))


def sample_singular_values(n: int, a: float, rng: torch.Generator) -> torch.Tensor:
    """``n`` pairs ``(σ₁ ≥ σ₂)`` in [0, 1] with ``Σ (σ₁ + 2σ₂) = a``, drawn pair by pair (``sample_svs``).

    Each pair is uniform inside the bounds that still let the remaining pairs meet the
    constraint; the last pair is then fixed by it.
    """
    s = torch.empty(n, 2, dtype=_F64)
    p, q = a, a - 3 * n + 3
    for i in range(n - 1):
        s1 = _uniform(rng, max(0.0, q / 3), min(1.0, p))
        q -= s1
        p -= s1
        s2 = _uniform(rng, max(0.0, q / 2), min(s1, p / 2))
        q = q - 2 * s2 + 3
        p -= 2 * s2
        s[i, 0], s[i, 1] = s1, s2
    s2 = _uniform(rng, max(0.0, (p - 1) / 2), p / 3)
    s[-1, 0], s[-1, 1] = p - 2 * s2, s2
    return s


def sample_system(rng: torch.Generator, n: int = 2, beta: tuple[float, float] | None = None,
                  bval: float = 1.0) -> torch.Tensor:
    """``n`` random contractive affine maps ``[n, 2, 3]`` (float64): ``[A | t]`` per map."""
    if n < 1:
        raise ValueError(f"an IFS needs at least one map, got n={n}")
    lo, hi = beta if beta is not None else ((5 + n) / 2, (6 + n) / 2)
    signs = torch.sign(torch.rand(2 * n, 2, 1, generator=rng, dtype=_F64) - 0.5)
    base = signs * torch.eye(2, dtype=_F64)
    angle = -math.pi + 2 * math.pi * torch.rand(2 * n, generator=rng, dtype=_F64)
    c, s_ = torch.cos(angle), torch.sin(angle)
    rot = torch.stack((torch.stack((c, -s_), -1), torch.stack((s_, c), -1)), -2)  # [2n, 2, 2]
    uv = rot @ base
    u, v = uv[:n], uv[n:]
    a = _uniform(rng, lo, hi)
    sv = sample_singular_values(n, a, rng)
    out = torch.empty(n, 2, 3, dtype=_F64)
    out[:, :, :2] = (u * sv[:, None, :]) @ v
    out[:, :, 2] = -bval + 2 * bval * torch.rand(n, 2, generator=rng, dtype=_F64)
    return out


def map_probabilities(system: torch.Tensor) -> torch.Tensor:
    """The chaos game's choice law: ``|det A_k| / Σ |det A_j|``."""
    det = (system[:, 0, 0] * system[:, 1, 1] - system[:, 0, 1] * system[:, 1, 0]).abs()
    return det / det.sum()


def _fixed_point(system: torch.Tensor) -> torch.Tensor:
    """``(I − A₀)⁻¹ t₀`` written as the official start point, for ``[B, n, 2, 3]`` systems → ``[B, 2]``."""
    a, b, e = system[:, 0, 0, 0], system[:, 0, 0, 1], system[:, 0, 0, 2]
    c, d, f = system[:, 0, 1, 0], system[:, 0, 1, 1], system[:, 0, 1, 2]
    det = a * d - b * c
    s = 1 / (1 + det - a - d)
    return torch.stack((s * ((1 - d) * e + b * f), s * ((1 - a) * f + c * e)), -1)


def _choices(systems: torch.Tensor, counts: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Map index of every step: the first ``k`` with ``u < cumsum(p)[k]``, the last map if none.

    That is the number of cumulative probabilities ``≤ u`` among the first ``n − 1`` (one
    comparison per step for the default two maps).
    """
    nmax = systems.shape[1]
    det = (systems[:, :, 0, 0] * systems[:, :, 1, 1] - systems[:, :, 0, 1] * systems[:, :, 1, 0]).abs()
    live = torch.arange(nmax)[None, :] < counts[:, None]
    det = det * live
    cum = torch.cumsum(det / det.sum(1, keepdim=True), 1)
    below_last = torch.arange(nmax)[None, :] < (counts - 1)[:, None]  # only the first n − 1 can be passed
    cum = cum.masked_fill(~below_last, math.inf)
    k = torch.zeros(uniforms.shape, dtype=torch.long)
    for m in range(nmax - 1):
        k += uniforms >= cum[:, m:m + 1]
    return k


_CHUNK = 8  # samples run together: bounds memory (≈ 2 MB per sample) while amortising the step loop


def chaos_game(systems: Sequence[torch.Tensor], uniforms: torch.Tensor) -> torch.Tensor:
    """The points visited by the chaos game: ``[B, N, 2]`` float64 for ``B`` systems.

    ``uniforms`` ``[B, N]`` are the per-step U(0, 1) draws that choose the maps (the official
    ``np.random.rand()`` of each step), so the result is a deterministic function of its inputs.
    """
    bsz, n_pts = uniforms.shape
    if len(systems) != bsz:
        raise ValueError(f"{len(systems)} systems for {bsz} rows of uniforms")
    out = torch.empty(bsz, n_pts, 2, dtype=_F64)
    for lo in range(0, bsz if n_pts else 0, _CHUNK):
        hi = min(bsz, lo + _CHUNK)
        out[lo:hi] = _chaos_chunk(systems[lo:hi], uniforms[lo:hi].to(_F64))
    return out


def _chaos_chunk(systems: Sequence[torch.Tensor], uniforms: torch.Tensor) -> torch.Tensor:
    bsz, n_pts = uniforms.shape
    nmax = max(int(s.shape[0]) for s in systems)
    sys = torch.zeros(bsz, nmax, 2, 3, dtype=_F64)
    for i, s in enumerate(systems):
        sys[i, : s.shape[0]] = s
    counts = torch.tensor([int(s.shape[0]) for s in systems])
    block = max(1, math.isqrt(n_pts - 1) + 1)  # ≈ √N points per block, ⌈N / block⌉ blocks
    nb = -(-n_pts // block)
    k = F.pad(_choices(sys, counts, uniforms), (0, nb * block - n_pts))
    k = k.reshape(bsz, nb, block).permute(2, 0, 1)  # [block, B, nb]: step j reads one row
    table = sys.reshape(bsz, nmax, 6).permute(2, 0, 1)  # [6, B, nmax]: a, b, e, c, d, f
    # every step's coefficients, [6, block, B, nb] (48 bytes a point: ≈ 5 MB per sample at N = 10⁵)
    coef = torch.gather(table[:, None].expand(6, block, bsz, nmax), 3, k[None].expand(6, block, bsz, nb))

    # level 1: the composition of each block's maps, [B, nb]
    one, zero = torch.ones(bsz, nb, dtype=_F64), torch.zeros(bsz, nb, dtype=_F64)
    qa, qb, qc, qd, qe, qf = one, zero, zero, one, zero, zero
    for j in range(block):
        a, b, e, c, d, f = coef[:, j]
        qa, qb, qc, qd, qe, qf = (a * qa + b * qc, a * qb + b * qd, c * qa + d * qc, c * qb + d * qd,
                                  a * qe + b * qf + e, c * qe + d * qf + f)
    # level 2: where each block starts
    x0 = torch.empty(bsz, nb, dtype=_F64)
    y0 = torch.empty(bsz, nb, dtype=_F64)
    cur = _fixed_point(sys)
    x, y = cur[:, 0], cur[:, 1]
    for blk in range(nb):
        x0[:, blk], y0[:, blk] = x, y
        x, y = (qa[:, blk] * x + qb[:, blk] * y + qe[:, blk], qc[:, blk] * x + qd[:, blk] * y + qf[:, blk])
    # level 3: every block's points, with the official update x' = a·x + b·y + e, y' = c·x + d·y + f
    pts = torch.empty(block, 2, bsz, nb, dtype=_F64)
    x, y = x0, y0
    for j in range(block):
        a, b, e, c, d, f = coef[:, j]
        x, y = a * x + b * y + e, c * x + d * y + f
        pts[j, 0], pts[j, 1] = x, y
    return pts.permute(2, 3, 0, 1).reshape(bsz, nb * block, 2)[:, :n_pts]


def sample_stamp(rng: torch.Generator) -> list[bool]:
    """Which of the 9 offsets of the 3×3 neighbourhood each rendered point sets (row-major, each ½)."""
    return [bool(v) for v in (torch.rand(9, generator=rng) < 0.5)]


def render_binary(points: torch.Tensor, size: int, stamp: Sequence[bool]) -> torch.Tensor:
    """The official ``render(points, s=size, binary=True, patch=True)``: bool ``[size, size]``.

    Rows come from the first coordinate, columns from the second; the region is the points'
    bounding box (a zero span counts as 1); pixel ``(r, c)`` hit by a point sets
    ``(r + dr − 1, c + dc − 1)`` for every offset ``3·dr + dc`` kept in ``stamp``.
    """
    if size < 1:
        raise ValueError(f"render size must be >= 1, got {size}")
    pts = points.to(_F64)
    lo, hi = pts.min(0).values, pts.max(0).values
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    scale = torch.full_like(span, size - 1) / span  # an IEEE division, as the official (s-1)/span (not 1/span·(s-1))
    idx = ((pts - lo) * scale).to(torch.long)  # truncation, as int() of a non-negative float
    ok = ((idx >= 0) & (idx < size)).all(1)
    hits = torch.zeros(size * size, dtype=torch.float32)
    hits[idx[ok, 0] * size + idx[ok, 1]] = 1.0
    kernel = torch.zeros(1, 1, 3, 3)
    for k, keep in enumerate(stamp):
        if keep:  # a hit at p sets p + (dr − 1, dc − 1): cross-correlation reads p − (dr − 1, dc − 1)
            kernel[0, 0, 2 - k // 3, 2 - k % 3] = 1.0
    out = F.conv2d(hits.reshape(1, 1, size, size), kernel, padding=1)
    return out[0, 0] > 0
