"""Step 2 and 4 of AnomalyHybrid: the encoder, the two decoders (AHD, AHE) and the conditional discriminator.

*paper*: one encoder extracts multi-scale features of the concatenated image, depth and
edge maps; two decoders — AHD conditioned on depth, AHE conditioned on edges — each have two
branches, an anomaly source ``A_gen`` and a fusion map ``M_gen``, composed as
``A_out = C_in·(1 − M_gen) + A_gen·M_gen``; a conditional GAN discriminator judges the result.

*our assumption* (no code is public, the paper gives no widths): a U-Net — stride-2
conv encoder with instance norm, skip connections into each decoder; each decoder re-reads
its own condition at every scale through SPADE-style modulation (Park et al. 2019: a
parameter-free instance norm whose scale and shift are predicted from the condition map),
which is what "conditioned on depth / edges" means here; sigmoid heads for ``A_gen`` (an
RGB image in [0, 1]) and ``M_gen`` (a map in [0, 1]); a pix2pix PatchGAN discriminator
over the output concatenated with its condition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Encoder", "SPADE", "HybridDecoder", "HybridGenerator", "ConditionalPatchD", "compose"]


def compose(content: torch.Tensor, source: torch.Tensor, fusion: torch.Tensor) -> torch.Tensor:
    """*paper*: ``A_out = C_in·(1 − M_gen) + A_gen·M_gen``; where the fusion map is 0 the input content is kept."""
    return content * (1 - fusion) + source * fusion


def _widths(width: int, n_down: int) -> list[int]:
    return [width * min(2 ** k, 4) for k in range(n_down + 1)]


class Encoder(nn.Module):
    """Multi-scale features of ``cat(C_in, depth, edge)``: level 0 at full size, level k at 1/2^k."""

    def __init__(self, in_ch: int, width: int, n_down: int) -> None:
        super().__init__()
        w = _widths(width, n_down)
        self.stem = nn.Sequential(nn.Conv2d(in_ch, w[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w[k], w[k + 1], 4, stride=2, padding=1), nn.InstanceNorm2d(w[k + 1], affine=True),
                          nn.LeakyReLU(0.2)) for k in range(n_down))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for block in self.down:
            feats.append(block(feats[-1]))
        return feats


class SPADE(nn.Module):
    """``IN(x)·(1 + γ(c)) + β(c)`` with γ, β predicted by a small conv net from the condition map ``c``."""

    def __init__(self, channels: int, cond_ch: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_ch, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = F.interpolate(cond, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True) \
            if cond.shape[-2:] != x.shape[-2:] else cond
        h = self.shared(c)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class HybridDecoder(nn.Module):
    """One decoder (AHD or AHE): up-sampling with skips, its condition at every scale, two heads (A_gen, M_gen)."""

    def __init__(self, width: int, n_down: int, cond_ch: int, spade_hidden: int) -> None:
        super().__init__()
        w = _widths(width, n_down)
        self.bottleneck = SPADE(w[-1], cond_ch, spade_hidden)
        self.convs = nn.ModuleList(nn.Conv2d(w[k + 1] + w[k], w[k], 3, padding=1) for k in reversed(range(n_down)))
        self.mods = nn.ModuleList(SPADE(w[k], cond_ch, spade_hidden) for k in reversed(range(n_down)))
        self.source_head = nn.Conv2d(w[0], 3, 3, padding=1)  # A_gen
        self.fusion_head = nn.Conv2d(w[0], 1, 3, padding=1)  # M_gen

    def forward(self, feats: list[torch.Tensor], cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.leaky_relu(self.bottleneck(feats[-1], cond), 0.2)
        for conv, mod, skip in zip(self.convs, self.mods, reversed(feats[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = F.leaky_relu(mod(conv(torch.cat([x, skip], 1)), cond), 0.2)
        return torch.sigmoid(self.source_head(x)), torch.sigmoid(self.fusion_head(x))


class HybridGenerator(nn.Module):
    """Encoder + AHD (depth) + AHE (edges). Inputs in [0, 1] (depth normalised, see ``structure``)."""

    def __init__(self, width: int, n_down: int, spade_hidden: int) -> None:
        super().__init__()
        self.encoder = Encoder(5, width, n_down)
        self.ahd = HybridDecoder(width, n_down, 1, spade_hidden)
        self.ahe = HybridDecoder(width, n_down, 1, spade_hidden)

    def encode(self, content: torch.Tensor, depth: torch.Tensor, edge: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(torch.cat([content * 2 - 1, depth, edge * 2 - 1], 1))

    def forward(self, content: torch.Tensor, depth: torch.Tensor, edge: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Both decoders on one encoding: ``{"depth": A_out, "depth_source", "depth_fusion", "edge": ..., ...}``."""
        feats = self.encode(content, depth, edge)
        out: dict[str, torch.Tensor] = {}
        for name, dec, cond in (("depth", self.ahd, depth), ("edge", self.ahe, edge * 2 - 1)):
            source, fusion = dec(feats, cond)
            out[name], out[f"{name}_source"], out[f"{name}_fusion"] = compose(content, source, fusion), source, fusion
        return out

    def decode(self, which: str, content: torch.Tensor, depth: torch.Tensor, edge: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder only (inference): ``(A_out, A_gen, M_gen)``."""
        feats = self.encode(content, depth, edge)
        dec, cond = (self.ahd, depth) if which == "depth" else (self.ahe, edge * 2 - 1)
        source, fusion = dec(feats, cond)
        return compose(content, source, fusion), source, fusion


class ConditionalPatchD(nn.Module):
    """pix2pix PatchGAN on ``cat(image, depth slot, edge slot)``: a real/fake logit per patch *given* the condition.

    An AHD output is shown with its depth in the depth slot and zeros in the edge slot, an AHE
    output the other way round, so one discriminator judges both decoders, each against the
    condition it had to follow (*our assumption*: the paper names one conditional discriminator).
    """

    def __init__(self, width: int, n_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(5, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = width
        for k in range(1, n_layers):
            nxt = width * min(2 ** k, 8)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), nn.InstanceNorm2d(nxt, affine=True),
                       nn.LeakyReLU(0.2)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image * 2 - 1, cond], 1))
