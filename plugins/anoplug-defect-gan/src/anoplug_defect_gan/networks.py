"""Defect-GAN's two networks: the SD-map-conditioned generator and the PatchGAN critic with a class head.

Numbers refer to the steps listed in :mod:`anoplug_defect_gan.defect_gan`.

- :class:`DefectGenerator` (steps 1-2): a StarGAN-style encoder (7x7 stem, ``n_down`` stride-2
  convolutions, ``n_res`` residual blocks) and a decoder of transposed convolutions, each
  followed by a :class:`SPADEResBlock` that modulates the features with the spatial
  distribution (SD) map and adds :class:`AdaptiveNoise`. Two heads give the foreground layer
  ``F`` (tanh) and the alpha / spatial-distribution map ``A`` (sigmoid).
- :class:`PatchCritic` (step 3): stride-2 4x4 convolutions with LeakyReLU(0.01) (StarGAN's D),
  a 3x3 PatchGAN head (one WGAN score per patch) and a classification head over the classes
  (``normal`` + the defect types) whose kernel covers the whole last feature map.

Images enter and leave the networks in [-1, 1] (StarGAN's convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptiveNoise", "SPADE", "SPADEResBlock", "ResidualBlock", "DefectGenerator", "PatchCritic",
           "resize_sd", "critic_feature_size"]


def resize_sd(sd: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The SD map at a feature map's size: area averaging, so a thin defect leaves a soft trace instead of vanishing."""
    if tuple(sd.shape[-2:]) == tuple(size):
        return sd
    return F.interpolate(sd, size=size, mode="area")


# -- 1. stochastic variation: adaptive noise ------------------------------------------------------------
class AdaptiveNoise(nn.Module):
    """Add a one-channel Gaussian noise map scaled by a learned per-channel multiplier: ``h + w_c · n``.

    Why: the paper's "adaptive noise" mimics the stochastic variation of real defects; the
    multiplier lets training decide how much each channel varies (StyleGAN's noise input,
    initialised at 0 as there). The noise comes from the caller (seeded per sample).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, h: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return h + self.weight * noise


# -- 1. spatial and categorical control: SPADE on the SD map ---------------------------------------------
class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019): IN without affine, then ``(1 + γ(S))·x̂ + β(S)``.

    γ and β are predicted per pixel from the SD map ``S`` (one channel per class), so *where*
    the map asks for *which* class decides how the decoder's features are modulated.
    """

    def __init__(self, channels: int, sd_channels: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(sd_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        h = self.shared(resize_sd(sd, x.shape[-2:]))
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SPADEResBlock(nn.Module):
    """SPADE → LeakyReLU(0.2) → conv3x3 → noise, twice, plus the identity (SPADE's residual block, with noise)."""

    def __init__(self, channels: int, sd_channels: int, hidden: int) -> None:
        super().__init__()
        self.spade1, self.spade2 = SPADE(channels, sd_channels, hidden), SPADE(channels, sd_channels, hidden)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.noise1, self.noise2 = AdaptiveNoise(channels), AdaptiveNoise(channels)

    def forward(self, x: torch.Tensor, sd: torch.Tensor, n1: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
        h = self.noise1(self.conv1(F.leaky_relu(self.spade1(x, sd), 0.2)), n1)
        h = self.noise2(self.conv2(F.leaky_relu(self.spade2(h, sd), 0.2)), n2)
        return x + h


class ResidualBlock(nn.Module):
    """StarGAN's bottleneck block: conv3x3-IN-ReLU-conv3x3-IN plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.InstanceNorm2d(channels, affine=True), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# -- 1.-2. the generator -------------------------------------------------------------------------------
class DefectGenerator(nn.Module):
    """One generator for both directions: ``G(x, S, noise) -> (F, A)``.

    The direction and the defect type are given by the SD map ``S`` alone (defacement: the
    type's channel is on where the defect goes; restoration: the ``normal`` channel is on where
    the defect is; all channels off where nothing should change), as the paper builds its SD
    map from the target label.
    """

    def __init__(self, n_classes: int, width: int = 64, n_down: int = 3, n_res: int = 6,
                 spade_hidden: int = 128) -> None:
        super().__init__()
        self.n_classes, self.n_down = n_classes, n_down
        enc: list[nn.Module] = [nn.Conv2d(3, width, 7, padding=3, bias=False),
                                nn.InstanceNorm2d(width, affine=True), nn.ReLU()]
        c = width
        for _ in range(n_down):
            enc += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False), nn.InstanceNorm2d(2 * c, affine=True),
                    nn.ReLU()]
            c *= 2
        self.encoder = nn.Sequential(*enc)
        self.trunk = nn.Sequential(*[ResidualBlock(c) for _ in range(n_res)])
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for _ in range(n_down):
            self.up.append(nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False))
            self.decoder.append(SPADEResBlock(c // 2, n_classes, spade_hidden))
            c //= 2
        # -- 2. the two heads of the layer-wise composition
        self.foreground = nn.Conv2d(c, 3, 7, padding=3)
        self.alpha = nn.Conv2d(c, 1, 7, padding=3)

    def noise_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """Shapes ``(1, h, w)`` of the noise maps one sample needs (two per decoder block)."""
        shapes = []
        for i in range(self.n_down):
            s = 2 ** (self.n_down - 1 - i)
            shapes += [(1, height // s, width // s)] * 2
        return shapes

    def forward(self, x: torch.Tensor, sd: torch.Tensor, noise: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(noise) != 2 * self.n_down:
            raise ValueError(f"the generator takes {2 * self.n_down} noise maps, got {len(noise)}")
        h = self.trunk(self.encoder(x))
        for i, (up, block) in enumerate(zip(self.up, self.decoder)):
            h = F.relu(block(up(h), sd, noise[2 * i], noise[2 * i + 1]))
        return torch.tanh(self.foreground(h)), torch.sigmoid(self.alpha(h))


# -- 3. the critic -------------------------------------------------------------------------------------------
def critic_feature_size(size: int, n_blocks: int) -> int:
    """Side of the critic's last feature map: each 4x4/stride-2/pad-1 conv maps n to ⌊(n − 2)/2⌋ + 1."""
    for _ in range(n_blocks):
        size = (size - 2) // 2 + 1
    return size


class PatchCritic(nn.Module):
    """StarGAN's discriminator: a PatchGAN score map (WGAN critic) and class logits ``(D_src, D_cls)``."""

    def __init__(self, n_classes: int, size: int, width: int = 64, n_blocks: int = 6) -> None:
        super().__init__()
        final = critic_feature_size(size, n_blocks)
        if final < 1:
            raise ValueError(f"a {size}px image is too small for {n_blocks} critic blocks")
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        c = width
        for _ in range(1, n_blocks):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            c *= 2
        self.main = nn.Sequential(*layers)
        self.src = nn.Conv2d(c, 1, 3, padding=1, bias=False)
        self.cls = nn.Conv2d(c, n_classes, final, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.main(x)
        return self.src(h), self.cls(h).flatten(1)
