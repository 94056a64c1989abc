"""SDGAN's networks: CycleGAN's ResNet translator and PatchGAN critic, and the D2GAN losses.

Written from the CycleGAN paper (Zhu et al. 2017, appendix 7.2: "c7s1-64, d128, d256, R256 ×
n, u128, u64, c7s1-3"; 70×70 PatchGAN "C64-C128-C256-C512") and the D2GAN paper / official
code (Nguyen et al. 2017, github.com/tund/D2GAN ``models.py``); no code was copied.

Images enter and leave the translators in [-1, 1] (tanh output, as CycleGAN).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResnetTranslator", "PatchCritic", "init_weights", "log_softplus", "d2_real_loss", "d2_fake_loss",
           "d2_generator_loss"]


# -- translator (generator) ------------------------------------------------------------------------
class _ResBlock(nn.Module):
    """R-k: two reflection-padded 3×3 convs with instance norm, ReLU between, plus the identity."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetTranslator(nn.Module):
    """CycleGAN's generator: c7s1-w, d2w, d4w, ``blocks`` × R4w, u2w, uw, c7s1-3, tanh.

    Instance norm without affine parameters and convs with bias (CycleGAN's choice with
    instance norm); the two stride-2 down- and up-samplings need sides divisible by 4.
    """

    def __init__(self, width: int = 64, blocks: int = 6, channels: int = 3) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7), nn.InstanceNorm2d(w), nn.ReLU(True)]
        for k in (1, 2):  # d2w, d4w
            layers += [nn.Conv2d(w * k, w * 2 * k, 3, stride=2, padding=1), nn.InstanceNorm2d(w * 2 * k), nn.ReLU(True)]
        layers += [_ResBlock(4 * w) for _ in range(blocks)]
        for k in (4, 2):  # u2w, uw (fractionally strided)
            layers += [nn.ConvTranspose2d(w * k, w * k // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(w * k // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# -- critic (one of the four discriminators) ----------------------------------------------------------
class PatchCritic(nn.Module):
    """PatchGAN: ``layers`` stride-2 4×4 convs (C-w … doubling, capped at 8w), one stride-1, then a 1-map.

    ``layers=3`` is CycleGAN's 70×70 PatchGAN (C64-C128-C256-C512 at w = 64); the first conv
    has no norm. Returns raw scores (logits) per patch; the D2 losses map them to positive
    values with softplus, as the official D2GAN code does.
    """

    def __init__(self, width: int = 64, layers: int = 3, channels: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        ch = width
        for n in range(1, layers + 1):
            out = width * min(2 ** n, 8)
            stride = 2 if n < layers else 1
            mods += [nn.Conv2d(ch, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        mods += [nn.Conv2d(ch, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_weights(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> nn.Module:
    """CycleGAN's ``normal`` init: conv weights ~ N(0, 0.02), biases 0; every draw from ``generator``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


# -- D2GAN losses (all to be minimised) -------------------------------------------------------------
def log_softplus(logits: torch.Tensor) -> torch.Tensor:
    """log D with D = softplus(l) > 0, stable for very negative l (where softplus(l) ≈ eˡ, so log D ≈ l).

    The official code takes ``tf.log`` of the softplus output directly; that is -inf once
    softplus underflows (l < -88 in float32). Below -20 the two agree to float precision.
    """
    return torch.where(logits < -20.0, logits, torch.log(F.softplus(logits.clamp(min=-20.0))))


def d2_real_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """D1, the discriminator that *rewards real data* (D2GAN eq. 1, D1's part, negated to minimise):

    L_D1 = α · E_x[−log D1(x)] + E_z[D1(G(z))],  D1 = softplus(logits).
    At its optimum D1*(x) = α · p_data(x) / p_G(x) (D2GAN Prop. 1).
    """
    return alpha * (-log_softplus(real_logits)).mean() + F.softplus(fake_logits).mean()


def d2_fake_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """D2, the discriminator that *rewards generated data* (D2GAN eq. 1, D2's part, negated):

    L_D2 = E_x[D2(x)] + β · E_z[−log D2(G(z))],  D2 = softplus(logits).
    At its optimum D2*(x) = β · p_G(x) / p_data(x).
    """
    return F.softplus(real_logits).mean() + beta * (-log_softplus(fake_logits)).mean()


def d2_generator_loss(d1_fake_logits: torch.Tensor, d2_fake_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """G fools both (D2GAN eq. 1, the terms that depend on G): L_G = −E_z[D1(G(z))] + β · E_z[log D2(G(z))].

    Against the optimal pair this is α·KL(P_data‖P_G) + β·KL(P_G‖P_data) up to constants
    (D2GAN Thm. 2): the KL term covers modes, the reverse KL keeps samples on the data.
    """
    return -F.softplus(d1_fake_logits).mean() + beta * log_softplus(d2_fake_logits).mean()
