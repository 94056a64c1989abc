"""Refined Mask Prediction (RMP): SeaS's mask head on frozen UNet and VAE-decoder features (SeaS step 5).

The fine-tuned UNet already knows where a defect is (its up-block features are
discriminative); the VAE decoder knows the exact, high-resolution edges. RMP fuses the two:

1. **coarse**: two UNet up-block outputs, at latent/2 and at the latent size (SD: up blocks
   1 and 2, 1280 and 640 channels), each projected by a 1×1 conv (to 128 and 64), the
   coarser one upsampled; concatenated and passed through self-attention transformer layers
   (diffusers' ``Transformer2DModel``, 4 layers × 8 heads in the paper's configuration);
2. **refine**: one Mask Refinement Module (MRM) per ×2 of the VAE: the coarse map is
   upsampled, passed through conv branches, *multiplied* with the projected VAE-decoder
   up-block output of that size, plus a skip;
3. a shared head (BatchNorm → ReLU → 3×3 conv) gives 2-class softmax probabilities, at full
   resolution and, for the second loss, on the coarse map;
4. training: anomaly images go through the MRMs; normal images (zero masks) through the
   coarse map upsampled (the official "NIA" path); loss = focal(γ=2) at full size + focal on
   the coarse map.

:class:`FeatureTap` collects module outputs with forward hooks (stock diffusers, no fork).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FeatureTap", "FeaturePlan", "plan_features", "MRM", "RMP", "focal_loss"]


class FeatureTap:
    """Forward hooks that keep the latest output of each watched module (cleared with :meth:`clear`)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.modules)
        self._handles: list[Any] = []

    def _hook(self, i: int) -> Any:
        def keep(_m: nn.Module, _inp: Any, out: Any) -> None:
            self.outputs[i] = out[0] if isinstance(out, tuple) else out
        return keep

    @contextlib.contextmanager
    def active(self) -> Iterator[FeatureTap]:
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        try:
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []

    def clear(self) -> None:
        self.outputs = [None] * len(self.modules)

    def get(self) -> list[torch.Tensor]:
        if any(o is None for o in self.outputs):
            raise RuntimeError("a watched module did not run in this pass")
        return list(self.outputs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FeaturePlan:
    """Which modules RMP reads: UNet outputs at latent/2 and latent size, VAE-decoder outputs per ×2."""

    unet_modules: tuple[str, str]  # "mid_block" or "up_blocks.j"
    unet_channels: tuple[int, int]
    vae_blocks: tuple[int, ...]  # decoder.up_blocks indices, coarse to fine
    vae_channels: tuple[int, ...]
    latent_size: int
    image_size: int


def _module(root: nn.Module, name: str) -> nn.Module:
    m: Any = root
    for part in name.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m


@torch.no_grad()
def plan_features(unet: Any, vae: Any, latent_size: int) -> FeaturePlan:
    """Find the modules by one dry run: the *first* UNet module (mid block, then up blocks) whose output has the
    latent size halved, the first with the latent size; and for each ×2 of the VAE the first decoder up block of
    that size. SD-1.x at 64 latents gives up blocks 1 and 2 and decoder up blocks 0, 1, 2, as the official code."""
    names = ["mid_block"] + [f"up_blocks.{j}" for j in range(len(unet.up_blocks))]
    tap = FeatureTap([_module(unet, n) for n in names])
    dev = next(unet.parameters()).device
    x = torch.zeros(1, unet.config.in_channels, latent_size, latent_size, device=dev)
    ctx = torch.zeros(1, 2, unet.config.cross_attention_dim, device=dev)
    with tap.active():
        unet(x, torch.tensor([0], device=dev), encoder_hidden_states=ctx)
    outs = tap.get()
    sizes = [int(o.shape[-1]) for o in outs]

    def first(size: int) -> int:
        if size not in sizes:
            raise ValueError(f"no UNet module outputs {size}x{size} features (sizes: {sizes})")
        return sizes.index(size)

    lo, mid = first(latent_size // 2), first(latent_size)
    dec = vae.decoder
    vtap = FeatureTap(list(dec.up_blocks))
    z = torch.zeros(1, vae.config.latent_channels, latent_size, latent_size, device=dev)
    with vtap.active():
        vae.decode(z)
    vouts = vtap.get()
    vsizes = [int(o.shape[-1]) for o in vouts]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    blocks = []
    s = latent_size * 2
    while s <= latent_size * factor:
        if s not in vsizes:
            raise ValueError(f"no VAE decoder block outputs {s}x{s} features (sizes: {vsizes})")
        blocks.append(vsizes.index(s))
        s *= 2
    return FeaturePlan((names[lo], names[mid]), (int(outs[lo].shape[1]), int(outs[mid].shape[1])), tuple(blocks),
                       tuple(int(vouts[b].shape[1]) for b in blocks), latent_size, latent_size * factor)


def unet_tap(unet: Any, plan: FeaturePlan) -> FeatureTap:
    return FeatureTap([_module(unet, n) for n in plan.unet_modules])


def vae_tap(vae: Any, plan: FeaturePlan) -> FeatureTap:
    return FeatureTap([vae.decoder.up_blocks[b] for b in plan.vae_blocks])


def _cbr(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class MRM(nn.Module):
    """Mask Refinement Module: upsample the coarse map ×2, refine it, gate the VAE feature with it, add a skip.

    out = conv(fine) · (b₁(c) + b₂(c) + b₃(b₂'(c))) + c, with c the upsampled coarse map and
    the b's 1×1/3×3 conv-BN-ReLU branches (the official conv2…conv9 layout).
    """

    def __init__(self, fine_channels: int, channels: int) -> None:
        super().__init__()
        self.fine = _cbr(fine_channels, channels, 1)
        self.skip = _cbr(channels, channels, 1)
        self.main = nn.Sequential(_cbr(channels, channels, 1), _cbr(channels, channels, 3), _cbr(channels, channels, 1))
        self.side = nn.Sequential(_cbr(channels, channels, 1), _cbr(channels, channels, 3), _cbr(channels, channels, 1))

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        c = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=True)
        main = self.main(c)
        gate = main + self.skip(c) + self.side(main)
        return self.fine(fine) * gate + c


class RMP(nn.Module):
    """The mask head (module docstring); ``forward`` returns 2-class probabilities."""

    def __init__(self, plan: FeaturePlan, *, low_channels: int = 128, mid_channels: int = 64, layers: int = 4,
                 heads: int = 8, groups: int = 32) -> None:
        from diffusers.models import Transformer2DModel

        super().__init__()
        c = low_channels + mid_channels
        if c % heads or c % groups:
            raise ValueError(f"RMP width {c} must be divisible by heads ({heads}) and groups ({groups})")
        self.low = nn.Conv2d(plan.unet_channels[0], low_channels, 1, bias=False)
        self.mid = nn.Conv2d(plan.unet_channels[1], mid_channels, 1, bias=False)
        self.attn = Transformer2DModel(num_attention_heads=heads, attention_head_dim=c // heads, in_channels=c,
                                       num_layers=layers, norm_num_groups=groups, cross_attention_dim=None)
        self.mrms = nn.ModuleList([MRM(ch, c) for ch in plan.vae_channels])
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 2, 3, padding=1))
        self.latent_size, self.image_size = plan.latent_size, plan.image_size

    def coarse(self, unet_features: Sequence[torch.Tensor]) -> torch.Tensor:
        low = F.interpolate(self.low(unet_features[0]), size=(self.latent_size,) * 2, mode="bilinear",
                            align_corners=False)
        x = torch.cat([low, self.mid(unet_features[1])], 1)
        return self.attn(x, return_dict=False)[0]

    def refine(self, coarse: torch.Tensor, vae_features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = coarse
        for mrm, fine in zip(self.mrms, vae_features):
            x = mrm(x, fine)
        return x

    def forward(self, unet_features: Sequence[torch.Tensor], vae_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inference: probabilities ``[B, 2, H, W]`` at image size (every sample through the MRMs)."""
        return self.head(self.refine(self.coarse(unet_features), vae_features)).softmax(1)

    def forward_train(self, unet_features: Sequence[torch.Tensor], vae_features: Sequence[torch.Tensor],
                      n_anomalies: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training (step 4): anomalies refined with their VAE features, normals by the upsampled coarse map.

        Returns (full-size probabilities of all samples, coarse probabilities of all samples).
        """
        coarse = self.coarse(unet_features)
        refined = self.refine(coarse[:n_anomalies], vae_features)
        normal = F.interpolate(coarse[n_anomalies:], size=refined.shape[-2:], mode="bilinear", align_corners=False)
        full = self.head(torch.cat([refined, normal])).softmax(1)
        return full, self.head(coarse).softmax(1)


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on 2-class probabilities, as the official code's (label smoothing 1e-5, α = 1).

    The target is a class index per pixel: a soft mask value is truncated (``long()``), so
    only pixels at exactly 1 count as defect — what the official code does with its bilinear
    64×64 masks.
    """
    idx = target.long().clamp(0, 1)  # [B,1,H,W]
    one_hot = torch.cat([1 - idx, idx], 1).float().clamp(smooth, 1.0 - smooth)
    pt = (one_hot * probs).sum(1) + smooth
    return (-(1 - pt).pow(gamma) * pt.log()).mean()
