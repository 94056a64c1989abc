"""The "real" defects of the embedded dataset, drawn as physical processes.

A scratch is a thin curved stroke that catches the light, a crack a jagged branching
walk, a hole a ragged opening onto the dark backing, a stain a soft blob with a darker
drying ring, contamination a hair or a few foreign particles, a thread break a missing
weft segment, a dent a depression of the height map. None of them pastes a patch or
blends through a Perlin mask, so generated anomalies are judged against something they
were not made from.

Each process edits a :class:`~anoplug.data.toy_render.Scene` in place, adds its ground
truth to ``scene.mask`` and returns the noun phrase of the caption.

**Difficulty.** A :class:`Difficulty` scales three physical properties of every process:
``contrast`` (how far the defect moves the pixels from the intact surface: the edit is
blended back towards the scene as it was), ``scale`` (lengths, radii, spreads) and
``width`` (stroke widths of scratches, cracks, fibres, frayed ends). The ground truth
follows the geometry, not the contrast: a faint scratch is still a scratch. The processes
draw exactly the same random numbers at every difficulty, so a hard sample is the easy one
made fainter, smaller and thinner (same place, same shape). ``easy`` (all 1) is the
original dataset, byte for byte: every factor multiplies a finished quantity, and the
contrast blend is skipped at 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from anoplug.data.toy_render import Scene, draw_lines, draw_polygon, grid, render_fabric

__all__ = ["apply_defect", "preposition", "DEFECTS", "Difficulty", "DIFFICULTIES", "EASY"]


@dataclass(frozen=True)
class Difficulty:
    """How hard the "real" defects are to see: three factors, each 1 in the original dataset.

    - ``contrast`` in (0, 1]: fraction of the defect's change of albedo (and height) kept;
    - ``scale`` in (0, 1]: factor on lengths, radii and spreads (area goes with its square);
    - ``width`` in (0, 1]: factor on stroke widths (the thinnest stroke is then ``width`` px
      instead of 1 px, drawn anti-aliased).
    """

    contrast: float = 1.0
    scale: float = 1.0
    width: float = 1.0

    def __post_init__(self) -> None:
        for name in ("contrast", "scale", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0:
                raise ValueError(f"difficulty {name} must be a number in (0, 1], got {v!r}")
            object.__setattr__(self, name, float(v))

    @property
    def is_easy(self) -> bool:
        return self.contrast == 1.0 and self.scale == 1.0 and self.width == 1.0

    def label(self) -> str:
        """The preset name when it is one, else ``contrast=..,scale=..,width=..``."""
        for name, d in DIFFICULTIES.items():
            if d == self:
                return name
        return f"contrast={self.contrast:g},scale={self.scale:g},width={self.width:g}"


EASY = Difficulty()
#: The named settings, measured with the bench's detector on toy:metal at 128 px (docs/evaluation.md): at ``easy``
#: DRAEM, CutPaste and NSA all reach image AUROC ~1; ``medium`` is where they begin to drop (best ~0.97); ``hard``,
#: the toy benchmark's setting, keeps the best of them clearly below (~0.94) and every one far above chance.
DIFFICULTIES: dict[str, Difficulty] = {
    "easy": EASY,
    "medium": Difficulty(contrast=0.3, scale=0.6, width=0.5),
    "hard": Difficulty(contrast=0.2, scale=0.6, width=0.5),
}


def _stroke(width: float, d: Difficulty) -> float:
    """A stroke width at difficulty ``d``: ``max(1, width)`` when easy, thinner (down to ``d.width`` px) otherwise."""
    return max(min(1.0, d.width), width * d.width)


def preposition(label: str) -> str:
    return {"scratch": "across", "stain": "on", "contamination": "on"}.get(label, "in")


def _px(n: int, frac: float) -> float:
    return frac * n


def _pick(rng: np.random.Generator, sc: Scene, margin: float) -> np.ndarray:
    """A random point (x, y) in pixels inside the allowed region, away from the border."""
    ok = sc.allowed().copy()
    m = max(int(margin * sc.n), 1)
    ok[:m] = ok[-m:] = False
    ok[:, :m] = ok[:, -m:] = False
    if sc.object_mask is not None and sc.where is None:
        ok &= ndimage.binary_erosion(sc.object_mask > 0.5, iterations=max(sc.n // 40, 1))
    flat = np.flatnonzero(ok)
    if flat.size == 0:
        flat = np.flatnonzero(sc.allowed())
    k = int(flat[rng.integers(flat.size)])
    return np.array([k % sc.n + 0.5, k // sc.n + 0.5])


def _walk(rng: np.random.Generator, start: np.ndarray, steps: int, step: float, turn: float,
          angle: float | None = None, drift: float = 0.0) -> np.ndarray:
    """A random walk whose heading changes by N(drift, turn) per step (smooth if turn is small)."""
    a = rng.uniform(0, 2 * np.pi) if angle is None else angle
    turns = np.cumsum(rng.normal(drift, turn, steps))
    heading = a + turns
    pts = start + np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * step, 0)
    return np.concatenate([start[None], pts])


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float, rough: float, harmonics: int = 6,
          aspect: float = 1.0, points: int = 64) -> np.ndarray:
    """Polygon of an irregular round blob: radius modulated by random harmonics."""
    th = np.linspace(0, 2 * np.pi, points, endpoint=False)
    k = np.arange(2, 2 + harmonics)
    amp = rng.normal(0, rough, harmonics) / k
    ph = rng.uniform(0, 2 * np.pi, harmonics)
    r = radius * (1 + (amp[None] * np.cos(k[None] * th[:, None] + ph[None])).sum(1))
    rot = rng.uniform(0, np.pi)
    x, y = r * np.cos(th) * aspect, r * np.sin(th)
    return centre + np.stack([x * np.cos(rot) - y * np.sin(rot), x * np.sin(rot) + y * np.cos(rot)], 1)


def _limit(sc: Scene, cover: np.ndarray) -> np.ndarray:
    return cover * sc.allowed() if sc.object_mask is not None or sc.where is not None else cover


def _mark(sc: Scene, cover: np.ndarray, thr: float = 0.25, grow: int = 1) -> None:
    m = cover > thr
    if grow:
        m = ndimage.binary_dilation(m, iterations=grow)
    if sc.object_mask is not None or sc.where is not None:
        m &= ndimage.binary_dilation(sc.allowed(), iterations=2)
    sc.mask = np.maximum(sc.mask, m)


def _scale(sc: Scene) -> float:
    return sc.n / 256.0


# ------------------------------------------------------------------------------------------------

def scratch(rng: np.random.Generator, sc: Scene, category: str, d: Difficulty = EASY) -> str:
    n = sc.n
    start = _pick(rng, sc, 0.2)
    length = rng.uniform(0.18, 0.4) * n * d.scale
    steps = 24
    path = _walk(rng, start, steps, length / steps, 0.03, drift=rng.normal(0, 0.02))
    path -= (path[-1] - path[0]) / 2  # centre the stroke on the picked point
    width = _stroke(rng.uniform(0.8, 1.8) * _scale(sc), d)
    core = _limit(sc, draw_lines(n, [path], width))
    bright = rng.random() < (0.75 if category in ("metal", "nut", "capsule") else 0.35)
    if bright:
        halo = _limit(sc, draw_lines(n, [path + np.array([0.8, 0.8]) * _scale(sc)], width * 1.2))
        sc.albedo = sc.albedo * (1 - 0.35 * halo[..., None])
        sc.albedo = sc.albedo + core[..., None] * (np.minimum(sc.albedo * 1.5 + 0.3, 1.0) - sc.albedo)
    else:
        sc.albedo = sc.albedo * (1 - 0.6 * core[..., None])
    _mark(sc, core, 0.2, grow=max(1, n // 200))
    thin = "thin" if width < 1.4 * _scale(sc) else "long"
    return f"a {thin} {'bright' if bright else 'dark'} scratch"


def crack(rng: np.random.Generator, sc: Scene, category: str, d: Difficulty = EASY) -> str:
    n = sc.n
    start = _pick(rng, sc, 0.15)
    step = n / 70 * d.scale
    steps = int(rng.integers(18, 32))
    main = _walk(rng, start, steps, step, 0.45, drift=0.0)
    main -= (main[-1] - main[0]) / 2
    paths = [main]
    for _ in range(int(rng.integers(1, 3))):
        j = int(rng.integers(3, steps - 3))
        paths.append(_walk(rng, main[j], int(rng.integers(5, 12)), step * 0.8, 0.5))
    width = _stroke(rng.uniform(1.0, 2.0) * _scale(sc), d)
    core = _limit(sc, draw_lines(n, paths, width))
    lip = _limit(sc, draw_lines(n, [p + np.array([-1.0, -1.0]) * _scale(sc) for p in paths], width))
    sc.albedo = sc.albedo * (1 + 0.25 * (lip * (1 - core))[..., None])
    sc.albedo = sc.albedo * (1 - 0.8 * core[..., None])
    if sc.height is not None:
        sc.height = sc.height - 0.012 * core
    _mark(sc, core, 0.2, grow=max(1, n // 128))
    return "a branching hairline crack" if len(paths) > 2 else "a jagged dark crack"


def hole(rng: np.random.Generator, sc: Scene, category: str, d: Difficulty = EASY) -> str:
    n = sc.n
    centre = _pick(rng, sc, 0.15)
    radius = rng.uniform(0.025, 0.06) * n * d.scale
    rough = rng.uniform(0.15, 0.6)
    poly = _blob(rng, centre, radius, rough, aspect=rng.uniform(0.7, 1.3))
    inside = _limit(sc, draw_polygon(n, poly))
    rim = np.clip(ndimage.uniform_filter(inside, size=max(3, int(5 * _scale(sc)))) - inside, 0, 1) * 2
    y, x = grid(n)
    lit = np.clip(((x * n - centre[0]) + (y * n - centre[1])) / radius, -1, 1)  # far side of the rim is lit
    backing = 0.05 + 0.03 * np.clip(1 - np.hypot(x * n - centre[0], y * n - centre[1]) / radius, 0, 1)
    sc.albedo = sc.albedo * (1 - inside[..., None]) + (inside * backing)[..., None]
    sc.albedo = sc.albedo * (1 + 0.35 * (rim * lit)[..., None] - 0.25 * rim[..., None])
    if sc.height is not None:
        sc.height = sc.height - 0.05 * inside
    frayed = category in ("fabric", "carpet")
    if frayed:  # torn fibres hang from the edge into the opening
        colour = sc.albedo[~(inside > 0.5)].mean(0) * 1.1
        strands = []
        for k in rng.integers(0, len(poly), int(rng.integers(8, 15))):
            inward = np.arctan2(centre[1] - poly[k][1], centre[0] - poly[k][0]) + rng.normal(0, 0.5)
            strands.append(_walk(rng, poly[k], 5, radius * rng.uniform(0.06, 0.14), 0.25, angle=inward))
        fibres = draw_lines(n, strands, _stroke(0.9 * _scale(sc), d)) * inside
        sc.albedo = sc.albedo * (1 - fibres[..., None]) + fibres[..., None] * colour
    _mark(sc, inside, 0.3, grow=max(1, n // 128))
    if frayed:
        return "a frayed hole"
    return "a ragged hole" if rough > 0.35 else "a small round hole"


_STAINS = {
    "coffee": (np.array([0.62, 0.45, 0.30]), "a brown coffee stain"),
    "oil": (np.array([0.45, 0.45, 0.50]), "a dark oil stain"),
    "rust": (np.array([0.95, 0.55, 0.28]), "an orange rust stain"),
}


def stain(rng: np.random.Generator, sc: Scene, category: str, d: Difficulty = EASY) -> str:
    n = sc.n
    centre = _pick(rng, sc, 0.15)
    radius = rng.uniform(0.05, 0.11) * n * d.scale
    poly = _blob(rng, centre, radius, rng.uniform(0.3, 0.8), harmonics=8, aspect=rng.uniform(0.6, 1.4))
    soft = ndimage.gaussian_filter(draw_polygon(n, poly), sigma=max(1.0, 2.5 * _scale(sc)))
    soft = _limit(sc, soft)
    ring = np.clip(4 * soft * (1 - soft), 0, 1)  # pigment gathers at the drying edge
    kind = list(_STAINS)[int(rng.integers(len(_STAINS)))]
    tint, phrase = _STAINS[kind]
    strength = rng.uniform(0.65, 0.95)
    alpha = soft * strength * (0.6 + 0.6 * ring)
    sc.albedo = sc.albedo * (1 - alpha[..., None] * (1 - tint))
    _mark(sc, soft, 0.3, grow=0)
    return phrase


_FOREIGN = {
    "black": np.array([0.06, 0.05, 0.05]), "white": np.array([0.95, 0.95, 0.92]),
    "blue": np.array([0.15, 0.30, 0.75]), "red": np.array([0.65, 0.12, 0.10]),
}


def contamination(rng: np.random.Generator, sc: Scene, category: str, d: Difficulty = EASY) -> str:
    n = sc.n
    colour_name = list(_FOREIGN)[int(rng.integers(len(_FOREIGN)))]
    colour = _FOREIGN[colour_name]
    centre = _pick(rng, sc, 0.2)
    if rng.random() < 0.5:  # a hair or fibre lying on the surface
        steps = 30
        path = _walk(rng, centre, steps, rng.uniform(0.2, 0.35) * n / steps * d.scale, 0.12)
        path -= (path[-1] - path[0]) / 2
        cover = _limit(sc, draw_lines(n, [path], _stroke(rng.uniform(0.8, 1.5) * _scale(sc), d)))
        phrase = f"a {colour_name} fibre lying"
    else:  # a cluster of particles
        k = int(rng.integers(4, 11))
        cover = np.zeros((n, n))
        for _ in range(k):
            c = centre + rng.normal(0, 0.03 * n * d.scale, 2)
            r = (rng.uniform(0.004, 0.012) * n + 0.8) * d.scale
            cover = np.maximum(cover, draw_polygon(n, _blob(rng, c, r, 0.4, points=16)))
        cover = _limit(sc, cover)
        phrase = f"a cluster of {colour_name} particles"
    shadow = np.roll(cover, (max(1, n // 200), max(1, n // 200)), (0, 1)) * (1 - cover)
    sc.albedo = sc.albedo * (1 - 0.3 * shadow[..., None])
    sc.albedo = sc.albedo * (1 - cover[..., None]) + cover[..., None] * colour
    if sc.height is not None:
        sc.height = sc.height + 0.008 * ndimage.gaussian_filter(cover, 1.0)
    _mark(sc, cover, 0.25, grow=max(1, n // 128))
    return phrase


def thread_break(rng: np.random.Generator, sc: Scene, category: str, d: Difficulty = EASY) -> str:
    n, p = sc.n, sc.params
    t = p["threads"]
    row = int(rng.integers(3, int(t) - 3))
    u0 = float(rng.uniform(3, t - 10))
    u1 = u0 + float(rng.uniform(3, 7)) * d.scale
    broken = render_fabric(p, n, broken=(row, u0, u1))
    gone = np.abs(broken - sc.albedo).sum(-1) > 1e-6
    # frayed ends: a few loose fibres hanging out of the cut thread
    paths = []
    y0 = (row + 0.5) / t * n
    for u in (u0, u1):
        for _ in range(int(rng.integers(1, 4))):
            start = np.array([u / t * n, y0 + rng.normal(0, 0.15) * n / t])
            ang = (np.pi if u == u1 else 0.0) + rng.normal(0, 0.6)
            paths.append(_walk(rng, start, 6, n / t * 0.25 * d.scale, 0.3, angle=ang))
    fray = draw_lines(n, paths, _stroke(0.8 * _scale(sc), d))
    sc.albedo = broken * (1 - 0.5 * fray[..., None]) + 0.5 * fray[..., None] * p["colour"]
    _mark(sc, gone.astype(float) + fray, 0.3, grow=max(1, n // 128))
    return "a broken weft thread"


def dent(rng: np.random.Generator, sc: Scene, category: str, d: Difficulty = EASY) -> str:
    n = sc.n
    centre = _pick(rng, sc, 0.18) / n
    rx, ry = rng.uniform(0.05, 0.09, 2) * d.scale
    rot = rng.uniform(0, np.pi)
    y, x = grid(n)
    dx, dy = x - centre[0], y - centre[1]
    u = (dx * np.cos(rot) + dy * np.sin(rot)) / rx
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / ry
    r2 = u**2 + v**2
    bowl = np.clip(1 - r2, 0, 1) ** 2
    deep = rng.uniform(0.025, 0.04)
    sc.height = sc.height - deep * bowl
    _mark(sc, bowl, 0.05, grow=0)
    return "a deep dent" if deep > 0.033 else "a shallow round dent"


DEFECTS = {"scratch": scratch, "crack": crack, "hole": hole, "stain": stain, "contamination": contamination,
           "thread_break": thread_break, "dent": dent}


def apply_defect(label: str, rng: np.random.Generator, sc: Scene, category: str, difficulty: Difficulty = EASY) -> str:
    """Draw defect ``label`` into the scene at ``difficulty``; returns its caption phrase.

    Below full contrast the defect is drawn as usual, then its change of albedo and height is
    scaled by ``contrast`` (``before + c * (after - before)``): the same defect, fainter.
    """
    c = difficulty.contrast
    if c == 1.0:  # the original path: nothing is blended, so the bytes are the original ones
        return DEFECTS[label](rng, sc, category, difficulty)
    albedo = sc.albedo.copy()
    height = None if sc.height is None else sc.height.copy()
    phrase = DEFECTS[label](rng, sc, category, difficulty)
    sc.albedo = albedo + c * (sc.albedo - albedo)
    if height is not None:
        sc.height = height + c * (sc.height - height)
    return _faint(phrase) if c <= 0.5 else phrase


def _faint(phrase: str) -> str:
    """``"a dark oil stain"`` -> ``"a faint dark oil stain"`` (captions say when a defect is barely visible)."""
    for article in ("an ", "a "):
        if phrase.startswith(article):
            return "a faint " + phrase[len(article):]
    return "faint " + phrase
