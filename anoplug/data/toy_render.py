"""Rendering primitives of the embedded dataset: smooth noise, signed distances, shading.

Kept apart from :mod:`anoplug.data.toy` so the category renderers read as recipes.
Everything is vectorised numpy on ``[n, n]`` grids in normalised coordinates, so one
recipe works at any image size. (This value noise is for *textures*; the Perlin noise
that generators use for anomaly masks lives elsewhere and is deliberately not reused.)

The plain weave (:func:`render_fabric`) lives here, not with the fabric recipe, because
the thread-break defect re-renders it: :mod:`anoplug.data.toy` and
:mod:`anoplug.data.toy_defects` both take it from this module, and the defects never
import the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["Scene", "grid", "noise", "fractal", "smooth_step", "disc_sdf", "hexagon_sdf", "shade_height",
           "draw_lines", "draw_polygon", "render_fabric"]

_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates in [0, 1), float64 ``[n, n]`` (cached, read-only)."""
    if n not in _GRIDS:
        t = (np.arange(n, dtype=np.float64) + 0.5) / n
        y, x = np.meshgrid(t, t, indexing="ij")
        y.flags.writeable = False
        x.flags.writeable = False
        _GRIDS[n] = (y, x)
    return _GRIDS[n]


def noise(rng: np.random.Generator, n: int, cells: int | tuple[int, int]) -> np.ndarray:
    """Smooth value noise: a ``cells`` grid of N(0,1) values upsampled bicubically to ``n x n``.

    Anisotropic cells (e.g. ``(n//2, 4)``) give streaks, which is how brushed metal and
    fibres are drawn.
    """
    cy, cx = (cells, cells) if isinstance(cells, int) else cells
    cy, cx = max(int(cy), 1), max(int(cx), 1)
    vals = rng.standard_normal((cy + 1, cx + 1)).astype(np.float32)
    if cy + 1 >= n and cx + 1 >= n:
        return vals[:n, :n].astype(np.float64)
    up = Image.fromarray(vals).resize((n, n), Image.BICUBIC)
    return np.asarray(up, dtype=np.float64)


def fractal(rng: np.random.Generator, n: int, cells: int | tuple[int, int], octaves: int = 3,
            persistence: float = 0.5) -> np.ndarray:
    """Sum of ``octaves`` noise layers, each twice as fine and ``persistence`` times as strong."""
    cy, cx = (cells, cells) if isinstance(cells, int) else cells
    out = np.zeros((n, n))
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * noise(rng, n, (min(cy * 2**o, n), min(cx * 2**o, n)))
        total += amp * amp
        amp *= persistence
    return out / np.sqrt(total)


def smooth_step(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def disc_sdf(px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    return np.sqrt(px**2 + py**2) - r


def hexagon_sdf(px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    """Signed distance to a regular hexagon with inradius ``r`` (flat sides top and bottom)."""
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    ax, ay = np.abs(px), np.abs(py)
    dot = np.minimum(kx * ax + ky * ay, 0.0)
    ax, ay = ax - 2 * dot * kx, ay - 2 * dot * ky
    ax = ax - np.clip(ax, -kz * r, kz * r)
    ay = ay - r
    return np.sqrt(ax**2 + ay**2) * np.sign(ay)


def shade_height(height: np.ndarray, specular: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Lambert + Blinn shading of a height map (height in units of the image width).

    Light from the upper left; a flat surface gets diffuse 1.0. Returns (diffuse, highlight).
    """
    n = height.shape[0]
    gy, gx = np.gradient(height * n)
    norm = np.sqrt(gx**2 + gy**2 + 1)
    light = np.array([-0.45, -0.55, 1.0])
    light = light / np.linalg.norm(light)
    lam = (-gx * light[0] - gy * light[1] + light[2]) / norm
    half = light + np.array([0, 0, 1.0])
    half = half / np.linalg.norm(half)
    nh = np.clip((-gx * half[0] - gy * half[1] + half[2]) / norm, 0, 1)
    return np.clip(lam / light[2], 0, 1.6), specular * nh**60


def _canvas(n: int, scale: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("L", (n * scale, n * scale), 0)
    return im, ImageDraw.Draw(im)


def _down(im: Image.Image, n: int) -> np.ndarray:
    return np.asarray(im.resize((n, n), Image.BOX), dtype=np.float64) / 255.0


def draw_lines(n: int, paths: list[np.ndarray], width: float, scale: int = 2) -> np.ndarray:
    """Anti-aliased coverage ``[n, n]`` in [0,1] of polylines given in pixel coordinates (x, y)."""
    im, dr = _canvas(n, scale)
    w = max(int(round(width * scale)), 1)
    for pts in paths:
        dr.line([(float(x) * scale, float(y) * scale) for x, y in pts], fill=255, width=w, joint="curve")
    return _down(im, n)


def draw_polygon(n: int, pts: np.ndarray, scale: int = 2) -> np.ndarray:
    """Anti-aliased coverage of a filled polygon (pixel coordinates)."""
    im, dr = _canvas(n, scale)
    dr.polygon([(float(x) * scale, float(y) * scale) for x, y in pts], fill=255)
    return _down(im, n)


def _arch(f: np.ndarray) -> np.ndarray:
    """Rounded thread cross-section on [0, 1): 0 at the edges, 1 in the middle (cheap sin**0.6)."""
    t = 4.0 * f * (1.0 - f)
    return np.sqrt(t) * (1.25 - 0.25 * t)


def render_fabric(p: dict, n: int, broken: tuple[int, float, float] | None = None) -> np.ndarray:
    """Plain weave: warp (vertical) and weft (horizontal) threads alternately on top.

    ``broken=(row, u0, u1)`` removes weft thread ``row`` between warp positions u0..u1,
    letting the warp threads and the gap beneath show through (a thread break).
    """
    y, x = grid(n)
    u = x * p["threads"] + p["wobble_u"]
    v = y * p["threads"] + p["wobble_v"]
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    au, av = _arch(fu), _arch(fv)
    warp_top = ((iu + iv) % 2) == 0
    su, sv = np.sqrt(av), np.sqrt(au)
    shade = np.where(warp_top, au * (0.55 + 0.45 * su), av * (0.55 + 0.45 * sv))
    ju, jv = iu.astype(np.int64) % 64, iv.astype(np.int64) % 64
    tint = np.where(warp_top, p["thread_tint"][0][ju], p["thread_tint"][1][jv])
    fib = np.where(warp_top, p["fibre"], p["fibre2"])
    if broken is not None:
        row, u0, u1 = broken
        gone = (iv == row) & (u >= u0) & (u <= u1)
        # Without the weft on top, the warp threads show flat and lower (darker), with dark gaps.
        shade = np.where(gone, 0.55 * au, shade)
        tint = np.where(gone, p["thread_tint"][0][ju], tint)
        fib = np.where(gone, p["fibre"], fib)
    lum = 0.18 + 0.82 * shade + fib
    return (p["colour"][None, None, :] + tint[..., None]) * lum[..., None]


@dataclass
class Scene:
    """A sample being rendered: albedo, optional height map, and what defects have marked.

    ``where`` limits where defects may go (default: the object, else everywhere);
    ``mask`` accumulates the ground truth.
    """

    n: int
    albedo: np.ndarray
    object_mask: np.ndarray | None = None
    height: np.ndarray | None = None
    specular: float = 0.3
    where: np.ndarray | None = None
    depth_output: bool = False
    params: dict = field(default_factory=dict)
    mask: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.mask is None:
            self.mask = np.zeros((self.n, self.n))

    def allowed(self) -> np.ndarray:
        if self.where is not None:
            return self.where
        if self.object_mask is not None:
            return self.object_mask > 0.5
        return np.ones((self.n, self.n), bool)

    def finish(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(image float32 HWC in [0,1], depth float32 HW or None)."""
        img = self.albedo
        depth = None
        if self.height is not None:
            diffuse, spec = shade_height(self.height, self.specular)
            img = img * diffuse[..., None] + spec[..., None]
            # depth = distance from the camera: 0.5 at the base plane; 1 unit = 1/5 image width
            depth = np.clip(0.5 - 5.0 * self.height, 0, 1).astype(np.float32)
        return np.clip(img, 0, 1).astype(np.float32), depth
