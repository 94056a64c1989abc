"""DT-GAN's networks: StarGAN-v2-style blocks, the two-path generator and the multi-task critic.

Written from the StarGAN v2 paper (Choi et al., CVPR 2020) and the design of its official code
(clovaai/stargan-v2 ``core/model.py``: pre-activation residual blocks whose output is divided by
√2, AdaIN as ``(1 + γ)·IN(x) + β``, a mapping network with one output branch per domain, a style
encoder and a discriminator with one output per domain). DT-GAN's own change is the generator
(:class:`DefectGenerator`): a style-free *background* path and a style-driven *defect foreground*
path, composed through a predicted alpha. Section numbers match the steps in
:mod:`anoplug_dt_gan.dtgan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResBlock", "AdaIN", "AdaResBlock", "MappingNetwork", "StyleEncoder", "DefectGenerator",
           "GeneratorOutput", "MultiTaskDiscriminator", "binarize", "he_init", "channels"]


def channels(width: int, max_width: int, n: int) -> list[int]:
    """Widths of ``n`` downsampling stages: ``width`` doubling per stage, capped at ``max_width``."""
    out = [width]
    for _ in range(n):
        out.append(min(out[-1] * 2, max_width))
    return out


def he_init(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """He (Kaiming-normal, fan-in) weights and zero biases for every conv / linear layer.

    StarGAN v2 initialises all its networks this way; the draws come from ``generator`` so the
    initial weights are part of the seeded run.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


# -- blocks -----------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """Pre-activation residual block: [IN] → LReLU → conv → [avg-pool] → [IN] → LReLU → conv, plus shortcut.

    The sum is divided by √2 so that the two unit-variance branches keep unit variance.
    """

    def __init__(self, c_in: int, c_out: int, *, normalize: bool = False, downsample: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(c_in, c_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm1 = nn.InstanceNorm2d(c_in, affine=True) if normalize else nn.Identity()
        self.norm2 = nn.InstanceNorm2d(c_in, affine=True) if normalize else nn.Identity()
        self.skip = nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.norm1(x), 0.2))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        h = self.conv2(F.leaky_relu(self.norm2(h), 0.2))
        s = self.skip(x)
        if self.downsample:
            s = F.avg_pool2d(s, 2)
        return (s + h) / math.sqrt(2)


class UpBlock(nn.Module):
    """The background path's decoder block: a :class:`ResBlock` with IN after a nearest ×2 upsampling."""

    def __init__(self, c_in: int, c_out: int, *, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.block = ResBlock(c_in, c_out, normalize=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(F.interpolate(x, scale_factor=2, mode="nearest") if self.upsample else x)


class AdaIN(nn.Module):
    """Adaptive instance normalisation (Huang & Belongie 2017) as StarGAN v2 writes it: ``(1 + γ(s))·IN(x) + β(s)``.

    The ``1 +`` keeps an untrained style near the identity.
    """

    def __init__(self, style_dim: int, c: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(c, affine=False)
        self.fc = nn.Linear(style_dim, 2 * c)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdaResBlock(nn.Module):
    """Decoder block of the foreground path: AdaIN → LReLU → [up ×2] → conv → AdaIN → LReLU → conv, plus shortcut."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, *, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, c_in)
        self.norm2 = AdaIN(style_dim, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False) if c_in != c_out else nn.Identity()

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.upsample else x

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self._up(F.leaky_relu(self.norm1(x, s), 0.2)))
        h = self.conv2(F.leaky_relu(self.norm2(h, s), 0.2))
        return (h + self.skip(self._up(x))) / math.sqrt(2)


# -- 1. style codes ------------------------------------------------------------------------------------
class MappingNetwork(nn.Module):
    """z (and a domain) → style code: a shared MLP, then one output branch per domain (StarGAN v2's F).

    4 shared layers and 4 layers per branch, ReLU, as the official code; ``hidden`` is 512 there.
    """

    def __init__(self, latent_dim: int, style_dim: int, n_domains: int, hidden: int = 512) -> None:
        super().__init__()
        shared: list[nn.Module] = [nn.Linear(latent_dim, hidden), nn.ReLU()]
        for _ in range(3):
            shared += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.shared = nn.Sequential(*shared)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, style_dim))
            for _ in range(n_domains))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.shared(z)
        every = torch.stack([b(h) for b in self.branches], 1)  # [B, domains, style_dim]
        return every[torch.arange(len(y), device=y.device), y]


def _trunk(size: int, width: int, max_width: int) -> tuple[nn.Sequential, int]:
    """StarGAN v2's shared trunk of E and D: conv, log2(size)−2 downsampling blocks to 4×4, LReLU, 4×4 conv, LReLU."""
    n = int(math.log2(size)) - 2
    chans = channels(width, max_width, n)
    layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, 1, 1)]
    layers += [ResBlock(a, b, downsample=True) for a, b in zip(chans, chans[1:])]
    layers += [nn.LeakyReLU(0.2), nn.Conv2d(chans[-1], chans[-1], 4, 1, 0), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers), chans[-1]


class StyleEncoder(nn.Module):
    """Image (and its domain) → style code: the shared trunk, then one linear head per domain (StarGAN v2's E)."""

    def __init__(self, size: int, style_dim: int, n_domains: int, width: int = 64, max_width: int = 512) -> None:
        super().__init__()
        self.trunk, c = _trunk(size, width, max_width)
        self.heads = nn.ModuleList(nn.Linear(c, style_dim) for _ in range(n_domains))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x).flatten(1)
        every = torch.stack([head(h) for head in self.heads], 1)
        return every[torch.arange(len(y), device=y.device), y]


# -- 2. the generator --------------------------------------------------------------------------------------
def binarize(alpha: torch.Tensor) -> torch.Tensor:
    """``1[α > 0.5]`` forward, the gradient of α backward (a straight-through estimator, Bengio et al. 2013).

    A soft alpha moves every pixel a little (and a GAN happily settles on a faint tint everywhere);
    the binary composition makes the defect region crisp and leaves every other pixel the input's own
    bits, while the straight-through gradient still tells each pixel whether turning on would help.
    """
    hard = (alpha > 0.5).to(alpha.dtype)
    return hard + alpha - alpha.detach()


@dataclass
class GeneratorOutput:
    """One translation: ``image = mask·foreground + (1 − mask)·input`` in [−1, 1]; mask = 1[alpha > 0.5] (straight-through)."""

    image: torch.Tensor
    alpha: torch.Tensor
    mask: torch.Tensor
    foreground: torch.Tensor
    background: torch.Tensor


class DefectGenerator(nn.Module):
    """Shared encoder; a style-free background path; an AdaIN defect path with an alpha head.

    - encoder: conv, ``n_down`` downsampling IN-ResBlocks, ``n_bottleneck`` IN-ResBlocks (StarGAN v2);
    - background path: the mirrored IN-ResBlock decoder → ``background`` (the product without defect);
    - foreground path: the mirrored AdaIN decoder (the style code) → 3 channels Δ and 1 alpha logit;
      the defect foreground is ``background + Δ`` (so a "defect" that restores the product is easy);
    - composition: ``image = m·foreground + (1 − m)·x`` with α = σ(alpha logit) and m = :func:`binarize` (α).
    """

    def __init__(self, style_dim: int, width: int = 64, max_width: int = 512, n_down: int = 4,
                 n_bottleneck: int = 2, alpha_bias: float = -2.0) -> None:
        super().__init__()
        self.alpha_bias = alpha_bias
        chans = channels(width, max_width, n_down)
        self.from_rgb = nn.Conv2d(3, width, 3, 1, 1)
        self.encode = nn.ModuleList([ResBlock(a, b, normalize=True, downsample=True) for a, b in zip(chans, chans[1:])]
                                    + [ResBlock(chans[-1], chans[-1], normalize=True) for _ in range(n_bottleneck)])
        ups = list(zip(chans[::-1], chans[::-1][1:]))  # (c_in, c_out) from the bottleneck upwards
        self.bg_decode = nn.ModuleList([UpBlock(chans[-1], chans[-1], upsample=False) for _ in range(n_bottleneck)]
                                       + [UpBlock(a, b, upsample=True) for a, b in ups])
        self.fg_decode = nn.ModuleList([AdaResBlock(chans[-1], chans[-1], style_dim) for _ in range(n_bottleneck)]
                                       + [AdaResBlock(a, b, style_dim, upsample=True) for a, b in ups])
        self.to_background = nn.Sequential(nn.InstanceNorm2d(width, affine=True), nn.LeakyReLU(0.2),
                                           nn.Conv2d(width, 3, 1, 1, 0))
        self.to_defect = nn.Sequential(nn.InstanceNorm2d(width, affine=True), nn.LeakyReLU(0.2),
                                       nn.Conv2d(width, 4, 1, 1, 0))
        for m in self.modules():  # reflection padding: with zeros the border pixels look special and alpha
            if isinstance(m, nn.Conv2d) and m.padding != (0, 0):  # piles up along the image edges
                m.padding_mode = "reflect"

    def reset_alpha_bias(self) -> None:
        """Start the alpha logit at ``alpha_bias`` (−2: α ≈ 0.12 < 0.5 nearly everywhere: training starts at the identity)."""
        with torch.no_grad():
            self.to_defect[2].bias[3].fill_(self.alpha_bias)

    def encode_content(self, x: torch.Tensor) -> torch.Tensor:
        h = self.from_rgb(x)
        for block in self.encode:
            h = block(h)
        return h

    def background_path(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.bg_decode:
            h = block(h)
        return self.to_background(h)

    def foreground_path(self, h: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Δ [B,3,H,W], alpha logits [B,1,H,W]) under style ``s``."""
        for block in self.fg_decode:
            h = block(h, s)
        out = self.to_defect(h)
        return out[:, :3], out[:, 3:]

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> GeneratorOutput:
        h = self.encode_content(x)
        background = self.background_path(h)
        delta, logits = self.foreground_path(h, s)
        alpha = torch.sigmoid(logits)
        mask = binarize(alpha)
        foreground = background + delta
        return GeneratorOutput(mask * foreground + (1 - mask) * x, alpha, mask, foreground, background)


# -- 3. the discriminator ------------------------------------------------------------------------------------
class MultiTaskDiscriminator(nn.Module):
    """StarGAN v2's D: the shared trunk and a 1×1 conv with one real/fake logit per defect type.

    ``forward(x, y)`` returns the logit of type ``y[i]``'s head for image ``i``: each type is judged
    by its own head (a multi-task discriminator), so learning "a real scratch" never pulls on holes.
    """

    def __init__(self, size: int, n_heads: int, width: int = 64, max_width: int = 512) -> None:
        super().__init__()
        self.trunk, c = _trunk(size, width, max_width)
        self.heads = nn.Conv2d(c, n_heads, 1, 1, 0)

    def all_heads(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x)).flatten(1)  # [B, n_heads]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.all_heads(x)[torch.arange(len(y), device=y.device), y]
