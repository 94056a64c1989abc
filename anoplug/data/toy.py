"""The embedded procedural dataset: industrial-looking images that ship inside anoplug.

Every demo, test and notebook needs data without a download or a licence question, so
ten categories are *rendered* on the fly, deterministically from
``(category, split, index, seed)``, at any square size:

- textures: ``fabric`` (plain weave), ``metal`` (brushed), ``wood`` (grain), ``carpet``
  (tufted fibre), ``tile`` (tiles with grout);
- objects on a background, with ``object_mask``: ``capsule`` (pill), ``nut`` (hex nut),
  ``bottle`` (bottle top seen from above);
- depth: ``surface3d`` — a studded rubber mat whose height map is returned as ``depth``
  and rendered with shading (the MVTec 3D-AD analogue);
- logical: ``tray`` — parts in a fixed arrangement (the MVTec LOCO analogue).

The "real" defects (scratch, hole, crack, stain, contamination, thread break, dent and
missing / extra / misplaced / swapped components) are drawn by the processes in
:mod:`anoplug.data.toy_defects` and :mod:`anoplug.data.toy_tray`, which share nothing
with any generator plugin (no Perlin masks, no pasted patches), so they can serve as
held-out real anomalies in evaluation. Every sample carries a one-sentence caption in
``Batch.text``. Normal samples of a category vary (placement, grain, lighting) but keep
one look, as in MVTec AD, so a detector has a well-defined notion of "normal".

How hard those defects are is a setting: ``ToyDataset("metal", split="test",
difficulty="hard")`` or the spec ``toy:metal?difficulty=hard`` (named settings ``easy``,
``medium``, ``hard``; or the knobs ``toy:metal?contrast=0.4&scale=0.7&width=0.6``, which
override the named setting, ``easy`` by default). ``easy`` is the original dataset, byte
for byte, and what plain ``toy:CATEGORY`` means; see :class:`~anoplug.data.toy_defects.Difficulty`.
Only the defects change: normal images (all of the train split) are the same at every
difficulty, and a defect sample keeps its place and shape, only fainter, smaller, thinner.
The logical defects of ``tray`` (a part missing, extra, misplaced, swapped) have no
contrast or width and ignore the setting.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from anoplug.data import toy_defects as D
from anoplug.data.base import DataError, Dataset
from anoplug.data.toy_defects import DIFFICULTIES, Difficulty
from anoplug.data.toy_render import Scene, fractal, grid, hexagon_sdf, noise, render_fabric, smooth_step
from anoplug.types import GOOD, Batch

__all__ = ["CATEGORIES", "DEFAULT_LENGTH", "DIFFICULTIES", "Difficulty", "ToyDataset", "ToySample", "render",
           "render_sample", "label_for", "resolve_difficulty"]

#: category -> kind ("texture" / "object" / "depth" / "logical"), defect labels, material phrase.
CATEGORIES: dict[str, dict] = {
    "fabric": {"kind": "texture", "defects": ("thread_break", "hole", "stain", "contamination"),
               "material": "woven fabric"},
    "metal": {"kind": "texture", "defects": ("scratch", "hole", "stain", "contamination"),
              "material": "brushed metal"},
    "wood": {"kind": "texture", "defects": ("scratch", "hole", "crack", "stain"), "material": "wood grain"},
    "carpet": {"kind": "texture", "defects": ("hole", "stain", "contamination"), "material": "tufted carpet"},
    "tile": {"kind": "texture", "defects": ("crack", "hole", "stain", "contamination"), "material": "ceramic tiles"},
    "capsule": {"kind": "object", "defects": ("crack", "scratch", "hole", "contamination"),
                "material": "a capsule"},
    "nut": {"kind": "object", "defects": ("scratch", "stain", "contamination", "crack"), "material": "a hex nut"},
    "bottle": {"kind": "object", "defects": ("crack", "contamination", "hole"), "material": "a bottle top"},
    "surface3d": {"kind": "depth", "defects": ("dent", "hole", "crack", "contamination"),
                  "material": "a studded rubber mat"},
    "tray": {"kind": "logical", "defects": ("missing", "extra", "misplaced", "swapped"),
             "material": "a parts tray"},
}

#: default number of samples per split (test: good and every defect type interleaved).
DEFAULT_LENGTH = {"train": 64, "test": 48}

_SPLITS = ("train", "test")
_MIN_DRAW = 128  # smaller images are rendered at this size and area-downsampled


def _rng(category: str, split: str, index: int, seed: int) -> np.random.Generator:
    """A numpy Generator owned by one sample: (seed, category, split, index) alone decide it."""
    key = [int(seed), zlib.crc32(category.encode()), _SPLITS.index(split), int(index)]
    return np.random.default_rng(np.random.SeedSequence(key))


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise DataError(f"unknown toy category {category!r}; choose one of: {', '.join(CATEGORIES)}")


#: what ``toy:CATEGORY?KEY=VALUE`` accepts (``difficulty`` names a setting, the others override its knobs)
DIFFICULTY_KEYS = ("difficulty", "contrast", "scale", "width")

DifficultyLike = str | Difficulty | Mapping[str, object] | None


def resolve_difficulty(value: DifficultyLike = None) -> Difficulty:
    """A :class:`Difficulty` from a name (``"hard"``), a Difficulty, or a mapping of ``DIFFICULTY_KEYS``.

    In a mapping, ``difficulty`` (default ``"easy"``) names the base setting and ``contrast``,
    ``scale``, ``width`` (numbers, or their text as in a spec) override its factors.
    """
    if value is None:
        return DIFFICULTIES["easy"]
    if isinstance(value, Difficulty):
        return value
    if isinstance(value, str):
        if value not in DIFFICULTIES:
            raise DataError(f"unknown toy difficulty {value!r}; choose one of: {', '.join(DIFFICULTIES)}")
        return DIFFICULTIES[value]
    if not isinstance(value, Mapping):
        raise DataError(f"difficulty must be a name ({', '.join(DIFFICULTIES)}), a Difficulty or a mapping, "
                        f"got {type(value).__name__}")
    bad = [k for k in value if k not in DIFFICULTY_KEYS]
    if bad:
        raise DataError(f"unknown toy difficulty option {bad[0]!r}; known: {', '.join(DIFFICULTY_KEYS)}")
    base = resolve_difficulty(value.get("difficulty", "easy"))  # type: ignore[arg-type]
    knobs = {"contrast": base.contrast, "scale": base.scale, "width": base.width}
    for k in ("contrast", "scale", "width"):
        if k in value:
            try:
                knobs[k] = float(value[k])  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise DataError(f"toy difficulty {k} must be a number in (0, 1], got {value[k]!r}") from None
    try:
        return Difficulty(**knobs)
    except ValueError as e:
        raise DataError(f"toy difficulty: {e}") from None


def label_for(category: str, split: str, index: int, defects: Sequence[str] | None = None) -> str:
    """The label of sample ``index``: train is all good; test cycles good, defect 1, defect 2, ..."""
    if split == "train":
        return GOOD
    cycle = (GOOD, *(defects if defects is not None else CATEGORIES[category]["defects"]))
    return cycle[index % len(cycle)]


# ---------------------------------------------------------------------------------------------
# Normal appearance, one renderer per category. Each returns a Scene (albedo, optional height
# map, where defects may go); defects then edit the scene before it is finished.
# ---------------------------------------------------------------------------------------------

def _fabric(rng: np.random.Generator, n: int) -> Scene:
    threads = rng.uniform(22, 26)
    colour = np.array([0.62, 0.58, 0.50]) + rng.normal(0, 0.012, 3)
    p = {"threads": threads, "colour": colour, "wobble_u": noise(rng, n, 3) * 0.12,
         "wobble_v": noise(rng, n, 3) * 0.12, "thread_tint": rng.normal(0, 0.03, (2, 64)),
         "fibre": fractal(rng, n, (n // 3, 6), octaves=2) * 0.06, "fibre2": fractal(rng, n, (6, n // 3), octaves=2) * 0.06}
    return Scene(n=n, albedo=render_fabric(p, n), params=p)


def _metal(rng: np.random.Generator, n: int) -> Scene:
    y, x = grid(n)
    streaks = fractal(rng, n, (max(n // 2, 8), 4), octaves=3, persistence=0.6)
    fine = noise(rng, n, (n, max(n // 8, 2)))
    sheen = 0.08 * np.sin(np.pi * (x * rng.uniform(0.6, 1.2) + rng.uniform(0, 2)))
    lum = 0.56 + rng.normal(0, 0.015) + 0.05 * streaks + 0.025 * fine + sheen + 0.05 * noise(rng, n, 2)
    colour = np.array([0.96, 0.98, 1.02])
    return Scene(n=n, albedo=lum[..., None] * colour)


def _wood(rng: np.random.Generator, n: int) -> Scene:
    y, x = grid(n)
    rings = rng.uniform(10, 13)
    # mostly straight vertical grain, bent gently (long wavelengths along y, x)
    warp = 0.8 * fractal(rng, n, (2, 2), octaves=2) + 0.2 * noise(rng, n, (5, 3)) + 0.25 * (y - 0.5) * rng.normal(0, 1)
    v = x * rings + warp * 1.0 + rng.uniform(0, 1)
    r = v - np.floor(v)
    late = smooth_step(0.55, 0.95, r) * (1 - smooth_step(0.95, 1.0, r))  # dark latewood band per ring
    fibres = fractal(rng, n, (3, max(n // 3, 8)), octaves=2)  # long vertical fibres
    t = np.clip(0.15 + 0.65 * late + 0.12 * fibres + 0.05 * noise(rng, n, 4), 0, 1)
    light = np.array([0.78, 0.58, 0.36]) + rng.normal(0, 0.02, 3)
    dark = np.array([0.50, 0.30, 0.15]) + rng.normal(0, 0.015, 3)
    return Scene(n=n, albedo=light * (1 - t[..., None]) + dark * t[..., None])


def _carpet(rng: np.random.Generator, n: int) -> Scene:
    y, x = grid(n)
    k = rng.uniform(15, 17)
    jit_u, jit_v = noise(rng, n, 6) * 0.12, noise(rng, n, 6) * 0.12
    v = y * k + jit_v
    row = np.floor(v)
    u = x * k + 0.5 * (row % 2) + jit_u
    fu, fv = u - np.floor(u) - 0.5, v - row - 0.5
    d = np.sqrt((fu / 0.5) ** 2 + (fv / 0.42) ** 2)
    tuft = np.clip(1 - d**2, 0, 1) ** 0.7
    fibre = fractal(rng, n, (n // 4, n // 4), octaves=2)
    lum = 0.35 + 0.55 * tuft + 0.12 * fibre + 0.05 * noise(rng, n, 3)
    colour = np.array([0.55, 0.50, 0.58]) + rng.normal(0, 0.015, 3)
    return Scene(n=n, albedo=colour * lum[..., None])


def _tile(rng: np.random.Generator, n: int) -> Scene:
    y, x = grid(n)
    k = 3.0
    u, v = x * k + rng.uniform(0, 1), y * k + rng.uniform(0, 1)
    fu, fv = u - np.floor(u), v - np.floor(v)
    g = 0.035
    edge = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv))
    grout = edge < g
    bevel = np.clip((edge - g) / 0.03, 0, 1)
    # bevel: highlight on the upper-left edges, shadow on the lower-right ones
    ramp = np.where((fu < g + 0.03) | (fv < g + 0.03), 0.08, 0.0) - np.where((fu > 1 - g - 0.03) | (fv > 1 - g - 0.03), 0.08, 0.0)
    tile_id = (np.floor(u) * 7 + np.floor(v) * 13).astype(int) % 16
    tint = rng.normal(0, 0.02, 16)[tile_id]
    chips = (fractal(rng, n, (n // 6, n // 6), octaves=2) > 1.1).astype(float)
    base = np.array([0.80, 0.78, 0.72]) + rng.normal(0, 0.01, 3)
    body = base * (1 + tint[..., None]) - 0.18 * chips[..., None] * np.array([1.0, 1.1, 1.3])
    body = body + (ramp * (1 - bevel * 0.5))[..., None] * (1 - grout[..., None]) + 0.02 * noise(rng, n, n // 8)[..., None]
    grout_col = np.array([0.42, 0.41, 0.40]) * (1 + 0.08 * noise(rng, n, n // 6))[..., None]
    return Scene(n=n, albedo=np.where(grout[..., None], grout_col, body))


def _background(rng: np.random.Generator, n: int, level: float, colour: Sequence[float]) -> np.ndarray:
    y, x = grid(n)
    vign = 1 - 0.25 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    lum = level * vign + 0.012 * noise(rng, n, n // 4) + 0.02 * noise(rng, n, 3)
    return lum[..., None] * np.asarray(colour)


def _stadium_sdf(px: np.ndarray, py: np.ndarray, half: float, r: float) -> np.ndarray:
    """Signed distance to a stadium (capsule outline) centred at the origin along x."""
    ax = np.clip(px, -half, half)
    return np.sqrt((px - ax) ** 2 + py**2) - r


def _capsule(rng: np.random.Generator, n: int) -> Scene:
    y, x = grid(n)
    cx, cy = 0.5 + rng.normal(0, 0.01), 0.5 + rng.normal(0, 0.01)
    ang = rng.normal(0, 0.03)
    c, s = np.cos(ang), np.sin(ang)
    px, py = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    half, r = 0.27, 0.13
    sdf = _stadium_sdf(px, py, half, r)
    d = sdf + r
    obj = sdf < 0
    h = np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))  # cylinder / hemisphere height
    left = px < rng.normal(0.0, 0.003)
    col = np.where(left[..., None], np.array([0.85, 0.35, 0.12]), np.array([0.93, 0.92, 0.88]))
    bg = _background(rng, n, 0.30, (1.0, 1.0, 1.02))
    shadow = np.clip(1 - 0.5 * np.exp(-np.clip(_stadium_sdf(px - 0.01, py - 0.015, half, r), 0, None) / 0.02), 0, 1)
    sc = Scene(n=n, albedo=np.where(obj[..., None], col, bg * shadow[..., None]), object_mask=obj.astype(np.float32))
    sc.height = np.where(obj, h * 0.05, 0.0)
    sc.specular = 0.5
    return sc


def _nut(rng: np.random.Generator, n: int) -> Scene:
    y, x = grid(n)
    cx, cy = 0.5 + rng.normal(0, 0.012), 0.5 + rng.normal(0, 0.012)
    ang = rng.uniform(0, np.pi / 3)
    px, py = x - cx, y - cy
    c, s = np.cos(ang), np.sin(ang)
    qx, qy = px * c + py * s, -px * s + py * c
    outer = hexagon_sdf(qx, qy, 0.33)
    rr = np.sqrt(px**2 + py**2)
    hole = rr - 0.15
    obj = (outer < 0) & (hole > 0)
    chamfer = np.clip(-outer / 0.05, 0, 1)
    bore = np.clip(hole / 0.05, 0, 1)
    theta = np.arctan2(py, px)
    turned = 0.04 * np.sin(rr * 260 + 0.3 * noise(rng, n, 4)) + 0.03 * noise(rng, n, (n // 3, n // 3))
    lum = 0.52 + 0.1 * np.cos(theta - 2.3) * (1 - chamfer) + turned
    metal = lum[..., None] * np.array([0.92, 0.93, 0.96])
    thread = (0.12 + 0.06 * np.sin(rr * 420))[..., None] * np.ones(3)
    bg = _background(rng, n, 0.16, (1.0, 1.0, 1.0))
    inside_bore = (rr < 0.15) & (outer < 0)
    img = np.where(obj[..., None], metal, np.where(inside_bore[..., None], thread, bg))
    sc = Scene(n=n, albedo=img, object_mask=obj.astype(np.float32))
    sc.height = np.where(obj, 0.02 * np.minimum(chamfer, bore), 0.0)
    sc.specular = 0.6
    return sc


def _bottle(rng: np.random.Generator, n: int) -> Scene:
    y, x = grid(n)
    cx, cy = 0.5 + rng.normal(0, 0.008), 0.5 + rng.normal(0, 0.008)
    px, py = x - cx, y - cy
    rr = np.sqrt(px**2 + py**2)
    obj = rr < 0.43
    glass = np.array([0.32, 0.20, 0.10])
    # radial profile: dark outer glass, bright rim ring, dark opening with a soft glow at the centre
    ring = np.exp(-((rr - 0.30) / 0.025) ** 2)
    outer = np.exp(-((rr - 0.40) / 0.02) ** 2) * 0.5
    glow = np.exp(-(rr / 0.09) ** 2)
    lum = 0.25 + 0.75 * ring + outer + 0.6 * glow * (rr < 0.26) + 0.04 * noise(rng, n, 6)
    ang_light = 0.15 * np.cos(np.arctan2(py, px) - rng.uniform(0, 2 * np.pi))
    body = glass * 1.8 * (lum + ang_light * ring)[..., None]
    bg = _background(rng, n, 0.08, (1.0, 1.0, 1.0))
    sc = Scene(n=n, albedo=np.where(obj[..., None], body, bg), object_mask=obj.astype(np.float32))
    sc.where = (rr > 0.05) & (rr < 0.40)
    return sc


def _surface3d(rng: np.random.Generator, n: int) -> Scene:
    y, x = grid(n)
    k = 6.0
    v = y * k + rng.uniform(0, 1)
    row = np.floor(v)
    u = x * k + 0.5 * (row % 2) + rng.uniform(0, 1)
    d = np.sqrt((u - np.floor(u) - 0.5) ** 2 + (v - row - 0.5) ** 2)
    stud = np.sqrt(np.clip(1 - (d / 0.32) ** 2, 0, 1))
    height = 0.5 * stud + 0.15 * fractal(rng, n, 3, octaves=2) + 0.01 * noise(rng, n, n // 4)
    albedo = (0.36 + 0.03 * noise(rng, n, n // 8))[..., None] * (np.array([0.55, 0.72, 0.60]) + rng.normal(0, 0.01, 3))
    sc = Scene(n=n, albedo=albedo)
    sc.height = height * 0.06  # in units of the image width: studs ~ 3 % of the width tall
    sc.specular = 0.25
    sc.depth_output = True
    return sc


_RENDER = {"fabric": _fabric, "metal": _metal, "wood": _wood, "carpet": _carpet, "tile": _tile,
           "capsule": _capsule, "nut": _nut, "bottle": _bottle, "surface3d": _surface3d}


# ---------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------

@dataclass
class ToySample:
    """One rendered sample as numpy arrays (HWC image in [0,1], HW masks)."""

    image: np.ndarray
    mask: np.ndarray
    label: str
    text: str
    object_mask: np.ndarray | None = None
    depth: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def render_sample(category: str, split: str = "train", index: int = 0, seed: int = 0, size: int = 256,
                  label: str | None = None, difficulty: DifficultyLike = None) -> ToySample:
    """Render one sample as arrays; ``label`` overrides the default label of ``index``.

    ``difficulty`` (default ``"easy"``, the original data) sets how visible a defect is; a
    good sample is the same at every difficulty.
    """
    _check_category(category)
    diff = resolve_difficulty(difficulty)
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 16:
        raise DataError(f"size must be an int >= 16, got {size!r}")
    if index < 0:
        raise DataError(f"index must be non-negative, got {index}")
    size, index = int(size), int(index)
    info = CATEGORIES[category]
    label = label_for(category, split, index) if label is None else label
    if label != GOOD and label not in info["defects"]:
        raise DataError(f"toy category {category!r} has no defect {label!r}; it has {', '.join(info['defects'])}")
    rng = _rng(category, split, index, seed)
    draw = max(size, _MIN_DRAW)
    if category == "tray":
        from anoplug.data.toy_tray import render_tray

        scene, phrase = render_tray(rng, draw, label)
    else:
        scene = _RENDER[category](rng, draw)
        phrase = "" if label == GOOD else D.apply_defect(label, rng, scene, category, diff)
    image, depth = scene.finish()
    mask = (scene.mask > 0.5).astype(np.float32)
    obj = scene.object_mask
    if draw != size:  # small images are area-averaged thumbnails of a 128-pixel rendering (no moire)
        image = np.stack([_shrink(image[..., c], size) for c in range(3)], -1)
        depth = None if depth is None else _shrink(depth, size)
        obj = None if obj is None else (_shrink(obj, size) >= 0.5).astype(np.float32)
        mask = (_shrink(mask, size) > 0.2).astype(np.float32)  # a defect pixel stays a defect pixel
    text = _GOOD_CAPTION[category] if label == GOOD else f"{phrase} {D.preposition(label)} {info['material']}"
    meta = {"source": f"toy:{category}/{split}/{index}", "category": category, "split": split, "index": index,
            "seed": seed}
    if not diff.is_easy and label != GOOD and category != "tray":  # the original records stay as they were
        meta["difficulty"] = diff.label()
    return ToySample(image=image, mask=mask, label=label, text=text,
                     object_mask=obj if info["kind"] in ("object", "logical") else None,
                     depth=depth if scene.depth_output else None, meta=meta)


def _shrink(a: np.ndarray, size: int) -> np.ndarray:
    """Area-average an ``[n, n]`` float map down to ``size x size``."""
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize((size, size), Image.BOX), dtype=np.float32)


_GOOD_CAPTION = {
    "fabric": "a normal woven fabric", "metal": "a normal brushed metal surface", "wood": "a normal wood grain surface",
    "carpet": "a normal tufted carpet", "tile": "normal ceramic tiles with grout",
    "capsule": "a normal capsule on a grey background", "nut": "a normal hex nut on a dark background",
    "bottle": "a normal bottle top seen from above", "surface3d": "a normal studded rubber mat",
    "tray": "a normal parts tray with every component in its place",
}


def _to_batch(samples: Sequence[ToySample]) -> Batch:
    def stack(arrs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.stack(arrs))).float()

    img = stack([s.image for s in samples]).permute(0, 3, 1, 2).contiguous()
    img = (img * 255).round_() / 255  # exactly representable as uint8, so PNG round trips are lossless
    kw = {}
    if samples[0].object_mask is not None:
        kw["object_mask"] = stack([s.object_mask for s in samples])[:, None]
    if samples[0].depth is not None:
        kw["depth"] = stack([s.depth for s in samples])[:, None]
    return Batch(image=img, mask=stack([s.mask for s in samples])[:, None], label=[s.label for s in samples],
                 meta=[s.meta for s in samples], text=[s.text for s in samples], **kw)


def render(category: str, split: str = "train", index: int = 0, seed: int = 0, size: int = 256,
           label: str | None = None, difficulty: DifficultyLike = None) -> Batch:
    """Render one sample as a :class:`Batch` of one (deterministic in all arguments)."""
    return _to_batch([render_sample(category, split, index, seed, size, label, difficulty)])


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------

class ToyDataset(Dataset):
    """``ToyDataset("metal", split="test")``: the embedded dataset of one category.

    ``length`` defaults to :data:`DEFAULT_LENGTH`; ``defects`` restricts the test split to
    some defect types (in the given order); ``difficulty`` (``"easy"``, ``"medium"``,
    ``"hard"``, a :class:`Difficulty` or a mapping of its knobs) sets how visible the defects
    are. Samples are rendered on demand, never stored.
    """

    scheme = "toy"
    #: the ``toy:CATEGORY?KEY=VALUE&...`` options :func:`anoplug.data.open_dataset` passes on
    options = DIFFICULTY_KEYS

    def __init__(self, category: str, split: str = "train", size: int = 256, seed: int = 0,
                 length: int | None = None, defects: Sequence[str] | None = None,
                 difficulty: DifficultyLike = None) -> None:
        _check_category(category)
        self.difficulty = resolve_difficulty(difficulty)
        if split not in _SPLITS:
            raise DataError(f"unknown split {split!r} for toy:{category}; use 'train' or 'test'")
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 16:
            raise DataError(f"size must be an int >= 16, got {size!r}")
        if length is not None and length < 1:
            raise DataError(f"length must be >= 1, got {length}")
        known = CATEGORIES[category]["defects"]
        if defects is not None:
            bad = [d for d in defects if d not in known]
            if bad or not defects:
                raise DataError(f"toy:{category} has defects {', '.join(known)}; got {list(defects)}")
        self.category, self.split, self.size, self.seed = category, split, int(size), int(seed)
        self.kind = CATEGORIES[category]["kind"]
        self.defects = tuple(defects) if defects is not None else known
        self.length = DEFAULT_LENGTH[split] if length is None else int(length)

    @classmethod
    def open(cls, rest: str, *, split: str = "train", size: int = 256, **kw) -> ToyDataset:
        """``rest`` is the category; spec options (``difficulty``, ``contrast``, ``scale``, ``width``) come in ``kw``."""
        knobs = {k: kw.pop(k) for k in DIFFICULTY_KEYS if k in kw and k != "difficulty"}
        if knobs:
            base = kw.pop("difficulty", None)
            if isinstance(base, Difficulty):
                base = {"contrast": base.contrast, "scale": base.scale, "width": base.width}
            elif isinstance(base, Mapping):
                base = dict(base)
            else:
                base = {"difficulty": "easy" if base is None else base}
            kw["difficulty"] = {**base, **knobs}
        return cls(rest.strip("/"), split=split, size=size, **kw)

    @property
    def spec(self) -> str:
        """The data source that reopens this dataset: ``toy:metal``, or ``toy:metal?difficulty=hard``."""
        d = self.difficulty
        if d.is_easy:
            return f"toy:{self.category}"
        name = d.label()
        if name in DIFFICULTIES:
            return f"toy:{self.category}?difficulty={name}"
        return f"toy:{self.category}?contrast={d.contrast:g}&scale={d.scale:g}&width={d.width:g}"

    def __len__(self) -> int:
        return self.length

    def label(self, index: int) -> str:
        """The label sample ``index`` will have (without rendering it)."""
        return label_for(self.category, self.split, index, self.defects)

    def batch(self, indices: Sequence[int]) -> Batch:
        idx = [int(i) for i in indices]
        if not idx:
            raise DataError("batch() needs at least one index")
        for i in idx:
            if not 0 <= i < len(self):
                raise IndexError(f"index {i} out of range for toy:{self.category} {self.split} ({len(self)} samples)")
        return _to_batch([render_sample(self.category, self.split, i, self.seed, self.size, self.label(i),
                                        self.difficulty) for i in idx])

    def __repr__(self) -> str:
        diff = "" if self.difficulty.is_easy else f", difficulty={self.difficulty.label()!r}"
        return (f"ToyDataset({self.category!r}, split={self.split!r}, size={self.size}, seed={self.seed}, "
                f"length={self.length}{diff})")
