"""A backbone as five levels at strides 2, 4, 8, 16 and 32: what DeSTSeg and MemSeg read off ResNet-18.

Both official codes call ``timm.create_model("resnet18", features_only=True)``, whose five outputs
are the stem after its ReLU (/2, 64 ch), ``layer1`` (/4, 64), ``layer2`` (/8, 128), ``layer3``
(/16, 256) and ``layer4`` (/32, 512). The weights come from :mod:`anoplug.backbones`, which loads
them offline only: ResNet-18 when torchvision's ImageNet file is in the torch hub cache, and
EfficientNet-Lite0, whose real ImageNet weights ship in a pip package, always. Lite0's levels are
the last stage at each stride (stage1 /2 16 ch, stage2 /4 24, stage3 /8 40, stage5 /16 112,
stage7 /32 320) -- *our assumption*, the closest offline stand-in for ResNet-18.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Pyramid", "build_pyramid", "PYRAMID_BACKBONES"]

#: backbone -> stages of anoplug's Backbone grouped into the five levels (strides 2 .. 32)
_LEVELS: dict[str, list[list[str]]] = {
    "resnet18": [["stem:relu"], ["stem:pool", "layer1"], ["layer2"], ["layer3"], ["layer4"]],
    "efficientnet-lite0": [["stem", "stage1"], ["stage2"], ["stage3"], ["stage4", "stage5"], ["stage6", "stage7"]],
}
PYRAMID_BACKBONES = tuple(_LEVELS)


class Pyramid(nn.Module):
    """``forward(x in [0,1]) -> [level0, ..., level4]`` (or up to ``upto``); trainable unless frozen.

    ``channels[i]`` is level *i*'s width. The input scaling is the backbone's own (ImageNet mean/std
    for ResNet-18, as DeSTSeg and MemSeg normalise; ``(255 x - 127) / 128`` for Lite0).
    """

    def __init__(self, name: str, levels: Sequence[nn.Module], channels: Sequence[int], mean: torch.Tensor,
                 std: torch.Tensor, pretrained: bool) -> None:
        super().__init__()
        self.backbone = name
        self.pretrained = pretrained
        self.levels = nn.ModuleList(levels)
        self.channels = tuple(int(c) for c in channels)
        self.register_buffer("mean", mean.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.detach().clone().view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, upto: int = 4) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for level in self.levels[:upto + 1]:
            x = level(x)
            out.append(x)
        return out


def build_pyramid(name: str, *, pretrained: bool = True) -> Pyramid:
    """Levels of backbone ``name`` (a fresh copy each call; nothing is frozen here).

    Raises :class:`anoplug.backbones.BackboneWeightsMissing` when ``pretrained`` and the weights are
    not on this machine.
    """
    from anoplug.backbones import get_backbone

    if name not in _LEVELS:
        raise ValueError(f"backbone {name!r} has no five-level layout here; choose one of {', '.join(_LEVELS)}")
    bb = get_backbone(name, pretrained=pretrained)
    stages = {n: copy.deepcopy(bb.stages[n]) for n in bb.stage_names}
    if "stem" in stages and name.startswith("resnet"):  # conv1, bn1, relu | maxpool: timm's level 0 is before the pool
        stem = stages.pop("stem")
        stages["stem:relu"], stages["stem:pool"] = nn.Sequential(*list(stem)[:3]), list(stem)[3]
    levels = [nn.Sequential(*(stages[s] for s in group)) for group in _LEVELS[name]]
    with torch.no_grad():
        probe = torch.zeros(1, 3, 64, 64)
        chans, x = [], (probe - bb.mean) / bb.std
        for lv in levels:
            lv.eval()
            x = lv(x)
            chans.append(x.shape[1])
    pyr = Pyramid(name, levels, chans, bb.mean, bb.std, pretrained)
    pyr.requires_grad_(True)
    return pyr
