"""The DCGAN pair EID-GAN trains (Radford, Metz, Chintala, ICLR 2016), for any power-of-two side.

EID-GAN keeps a "vanilla DCGAN-style" architecture: Conv-BatchNorm-ReLU in the generator and
Conv-BatchNorm-LeakyReLU in the discriminator. DCGAN's 64² recipe, generalised to side ``R``:

- G: z (``z_dim`` × 1 × 1) → ConvT(4, 1, 0) to 4 × 4 → (log2 R − 3) blocks
  ConvT(4, 2, 1)-BN-ReLU halving the channels → ConvT(4, 2, 1) to 3 channels → tanh;
- D: Conv(4, 2, 1)-LeakyReLU(0.2) (no BN on the first layer, as DCGAN) → blocks
  Conv(4, 2, 1)-BN-LeakyReLU(0.2) doubling the channels down to 4 × 4 → Conv(4, 1, 0) to one logit.

Channels are ``width`` × 2^k as in DCGAN (ngf = ndf = 64 there), capped at ``max_width`` so a
1024² network stays buildable. Weights are initialised as DCGAN §4 prescribes (conv
N(0, 0.02), BN scale N(1, 0.02), BN shift 0), drawn from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "dcgan_init", "check_resolution"]


def check_resolution(resolution: int) -> int:
    """The number of stride-2 stages of a side-``resolution`` DCGAN (a power of two, at least 16)."""
    n = int(math.log2(resolution)) if resolution > 0 else 0
    if resolution < 16 or 2 ** n != resolution:
        raise ValueError(f"DCGAN resolution must be a power of two >= 16, got {resolution}")
    return n - 2  # stages between 4 x 4 and the full side


def _channels(width: int, max_width: int, k: int) -> int:
    return min(width * 2 ** k, max_width)


class DCGANGenerator(nn.Module):
    """z → image in [−1, 1] (tanh), side ``resolution``."""

    def __init__(self, resolution: int = 64, width: int = 64, z_dim: int = 100, max_width: int = 512) -> None:
        super().__init__()
        stages = check_resolution(resolution)
        self.resolution, self.z_dim = resolution, z_dim
        chans = [_channels(width, max_width, k) for k in range(stages - 1, -1, -1)]  # 4x4 ... R/2
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, chans[0], 4, 1, 0, bias=False), nn.BatchNorm2d(chans[0]),
                                   nn.ReLU(True)]
        for a, b in zip(chans, chans[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(len(z), self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """Image in [−1, 1] → one real/fake logit per image."""

    def __init__(self, resolution: int = 64, width: int = 64, max_width: int = 512) -> None:
        super().__init__()
        stages = check_resolution(resolution)
        chans = [_channels(width, max_width, k) for k in range(stages)]  # R/2 ... 4x4
        layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(chans[-1], 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def dcgan_init(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """DCGAN §4 initialisation, every draw from ``generator``: conv N(0, 0.02); BN scale N(1, 0.02), shift 0."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
                nn.init.zeros_(m.bias)
    return module
