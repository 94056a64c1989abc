"""The style network: CLIPstyler's small U-Net with ngf = 16 (615,267 parameters), built fresh per image.

Why this network: AnoStyler stylises a *given* normal image, so the network only has to
learn a local colour/texture edit of that one image in 76 Adam steps; a tiny U-Net with
skip connections reproduces the image easily (structure kept) and has few enough weights
to fit in seconds. Layout (official ``src/StyleNet.py``, written anew here):

1×1 stem → residual block → 3 down blocks (residual block, then a stride-2 4×4 conv) →
residual bottleneck (8·ngf = 128 channels) → 3 up blocks (bilinear ×2, concatenate the
skip, residual block) → residual output block on [up1, stem] → 1×1 conv → sigmoid.
Every residual block is conv3×3–IN–ReLU–conv3×3–IN–ReLU plus a 1×1 shortcut; the
InstanceNorms have no affine parameters. Inputs need sides divisible by 8.

The weights are initialised with PyTorch's default conv rule (Kaiming-uniform, a = √5;
bias U(±1/√fan_in)) — what the official code gets — but drawn from an explicit
``torch.Generator`` so each sample's network is reproducible from its seed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ResBlock", "DownBlock", "UpBlock", "StyleUNet", "PAPER_PARAMETERS", "init_weights"]

#: the parameter count with ngf = 16 (paper: "0.61M trainable").
PAPER_PARAMETERS = 615_267


class ResBlock(nn.Module):
    """Two 3×3 conv–InstanceNorm–ReLU layers plus a 1×1 shortcut (the official ``EncodingBlock``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.InstanceNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1), nn.InstanceNorm2d(cout), nn.ReLU())
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class DownBlock(nn.Module):
    """Residual block, then a stride-2 4×4 conv; returns (downsampled, full-resolution skip)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.res = ResBlock(cin, cout)
        self.down = nn.Conv2d(cout, cout, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.res(x)
        return self.down(f), f


class UpBlock(nn.Module):
    """Bilinear ×2, concatenate the skip (``cout`` channels), residual block to ``cout``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.res = ResBlock(cin + cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.res(torch.cat([self.up(x), skip], 1))


class StyleUNet(nn.Module):
    """``U(I)``: image ``[B,3,H,W]`` in [0,1] → stylised image in (0,1) (sigmoid output)."""

    def __init__(self, ngf: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, ngf, 1)
        self.inp = ResBlock(ngf, ngf)
        self.down1, self.down2, self.down3 = DownBlock(ngf, ngf), DownBlock(ngf, 2 * ngf), DownBlock(2 * ngf, 4 * ngf)
        self.bottleneck = ResBlock(4 * ngf, 8 * ngf)
        self.up3, self.up2, self.up1 = UpBlock(8 * ngf, 4 * ngf), UpBlock(4 * ngf, 2 * ngf), UpBlock(2 * ngf, ngf)
        self.out = ResBlock(2 * ngf, ngf)
        self.head = nn.Conv2d(ngf, 3, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-1] % 8 or image.shape[-2] % 8:
            raise ValueError(f"StyleUNet needs sides divisible by 8, got {tuple(image.shape[-2:])}")
        x = self.inp(self.stem(image))
        d1, s1 = self.down1(x)
        d2, s2 = self.down2(d1)
        d3, s3 = self.down3(d2)
        h = self.up1(self.up2(self.up3(self.bottleneck(d3), s3), s2), s1)
        return torch.sigmoid(self.head(self.out(torch.cat([h, x], 1))))


@torch.no_grad()
def init_weights(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """PyTorch's default ``Conv2d`` initialisation, every number from ``generator``."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            fan_in = m.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            m.bias.copy_(torch.rand(m.bias.shape, generator=generator) * 2 * bound - bound)
    return net
