"""NSA's per-class settings (the MVTec AD tables of the official ``train_mvtec.py``).

Half-width bounds are fractions of the image side, ((h_min, h_max), (w_min, w_max)).
Textures use mixed gradients and resize bounds (0.5, 2); objects use source gradients and
(0.7, 1.3). ``background`` is the (brightness, threshold) heuristic that builds an object
mask when none is given; ``None`` means the class has no object mask in the paper.
Our toy categories map to the closest MVTec analogue (``ALIASES``); unknown names get the
generic object or texture preset.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    kind: str  # "texture" | "object"
    width_bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.03, 0.4), (0.03, 0.4))
    num_patches: int = 3
    logistic: tuple[float, float] = (1 / 6, 15)  # (k, x0) of the soft label
    background: tuple[float, float] | None = None
    min_object_pct: float = 0.25  # the function defaults of patch_ex
    min_overlap_pct: float = 0.25

    @property
    def clone(self) -> str:
        return "mixed" if self.kind == "texture" else "normal"

    @property
    def resize_bounds(self) -> tuple[float, float]:
        return (0.5, 2.0) if self.kind == "texture" else (0.7, 1.3)


_W = ((0.03, 0.4), (0.03, 0.4))
MVTEC: dict[str, Preset] = {
    "bottle": Preset("object", _W, 3, (1 / 12, 24), (200, 60), 0.7, 0.25),
    "cable": Preset("object", ((0.05, 0.4), (0.05, 0.4)), 3, (1 / 12, 24)),
    "capsule": Preset("object", ((0.03, 0.15), (0.03, 0.4)), 3, (1 / 2, 4), (200, 60), 0.7, 0.25),
    "hazelnut": Preset("object", ((0.03, 0.35), (0.03, 0.35)), 3, (1 / 12, 24), (20, 20), 0.7, 0.25),
    "metal_nut": Preset("object", _W, 3, (1 / 3, 7), (20, 20), 0.5, 0.25),
    "pill": Preset("object", ((0.03, 0.2), (0.03, 0.4)), 3, (1 / 3, 7), (20, 20), 0.7, 0.25),
    "screw": Preset("object", ((0.03, 0.12), (0.03, 0.12)), 4, (1.0, 3), (200, 60), 0.5, 0.25),
    "toothbrush": Preset("object", ((0.03, 0.4), (0.03, 0.2)), 3, (1 / 6, 15), (20, 20), 0.25, 0.25),
    "transistor": Preset("object", _W, 3, (1 / 6, 15)),
    "zipper": Preset("object", ((0.03, 0.4), (0.03, 0.2)), 4, (1 / 6, 15), (200, 60), 0.7, 0.25),
    "carpet": Preset("texture", _W, 4, (1 / 3, 7)),
    "grid": Preset("texture", _W, 4, (1 / 3, 7)),
    "leather": Preset("texture", _W, 4, (1 / 3, 7)),
    "tile": Preset("texture", _W, 4, (1 / 3, 7)),
    "wood": Preset("texture", _W, 4, (1 / 6, 15)),
}

GENERIC: dict[str, Preset] = {
    "object": Preset("object", _W, 3, (1 / 6, 15)),
    "texture": Preset("texture", _W, 4, (1 / 3, 7)),
}

#: our toy categories (anoplug.data.toy) -> MVTec analogue. Their object masks come with the
#: batch, so the MVTec brightness heuristic (``background``) is never needed for them.
ALIASES: dict[str, str] = {
    "fabric": "carpet", "metal": "grid", "surface3d": "leather",
    "nut": "metal_nut", "tray": "transistor",
}


def resolve(category: str, has_object_mask: bool) -> tuple[str, Preset]:
    """(name of the preset used, preset) for a class name.

    Unknown names get the generic object preset when the images come with object masks,
    else the generic texture preset.
    """
    name = category.strip().lower().replace("-", "_").replace(" ", "_")
    name = ALIASES.get(name, name)
    if name in MVTEC:
        return name, MVTEC[name]
    if name in GENERIC:
        return name, GENERIC[name]
    name = "object" if has_object_mask else "texture"
    return name, GENERIC[name]
