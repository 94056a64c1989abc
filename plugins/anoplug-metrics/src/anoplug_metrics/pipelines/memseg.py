"""``memseg``: MemSeg (Yang et al., 2022; code TooTouch/MemSeg), as ASBench runs it.

- **Encoder**: a pretrained backbone in five levels (ResNet-18: stem /2, ``layer1..4``). As in the
  official ``main.py`` only levels 1-3 are frozen; the stem and level 4 train with the rest, and
  the whole model (frozen levels' batch norms included) is in train mode while training.
- **Memory bank**: the level 1-3 features of ``n_memory`` (30) normal training images, taken once
  before training with the encoder in eval mode.
- **Difference information**: for each input, the memory sample with the smallest summed per-level
  mean squared difference; each level is concatenated with its squared difference to that sample
  (``[f, (m - f)^2]``), so a memory image's difference half is exactly zero.
- **Multi-scale feature fusion**: per level a 3x3 conv times coordinate attention, two 3x3 convs
  halving the width, top-down addition of the upsampled coarser level, then *spatial attention*:
  each level is multiplied by the channel mean of its difference half times the upsampled coarser
  mask (level 3's mask is its own mean).
- **Decoder**: U-Net-like upsampling blocks (bilinear x2, 3x3 conv, BN, ReLU) fusing the three fused
  levels and the stem, to a 2-channel map at full size.
- **Loss and schedule** (``configs.yaml``): softmax; 0.6 L1 on the anomaly channel + 0.4 MemSeg's
  focal loss (gamma 4, label smoothing 1e-5); AdamW lr 3e-3, weight decay 5e-4, 5000 steps of batch
  8, linear warm-up from 1e-4 over 10 % of the steps then cosine back to 1e-4.
- **Inference**: softmax channel 1; image score = mean of the 100 highest pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from anoplug_metrics.pipelines._common import (
    Callback,
    Detector,
    SyntheticSet,
    draw_batch,
    lr_of,
    top_k_for,
    top_k_mean,
    torch_default_init,
)
from anoplug_metrics.pipelines._features import Pyramid, build_pyramid

__all__ = ["Config", "MemoryBank", "CoordAtt", "MSFF", "MemSegDecoder", "MemSegNet", "MemSegDetector",
           "memseg_focal_loss", "warmup_cosine", "train"]


@dataclass(frozen=True)
class Config:
    """Official values (TooTouch/MemSeg ``configs.yaml`` as ASBench's ``MemSeg/configs.yaml``; see the README)."""

    steps: int = 5000
    batch_size: int = 8
    size: int = 256
    anomaly_prob: float = 0.5
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 5e-4
    l1_weight: float = 0.6
    focal_weight: float = 0.4
    focal_gamma: float = 4.0
    n_memory: int = 30
    head_width: int = 48
    top_k: int = 100
    backbone: str = "efficientnet-lite0"  # official: resnet18 (needs its ImageNet file offline)

    CPU: ClassVar[dict[str, Any]] = {"steps": 300, "size": 128}


# -- memory -----------------------------------------------------------------------------------------------------
class MemoryBank(nn.Module):
    """Level 1-3 features of the memory images (buffers), and the nearest-sample difference."""

    def __init__(self, features: list[torch.Tensor]) -> None:
        super().__init__()
        self.n_levels = len(features)
        for i, f in enumerate(features):
            self.register_buffer(f"level{i}", f.detach().clone())

    def bank(self, i: int) -> torch.Tensor:
        return getattr(self, f"level{i}")

    @torch.no_grad()
    def nearest(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Index of the memory sample with the smallest sum over levels of the mean squared difference."""
        total = None
        for i, f in enumerate(features):
            m = self.bank(i)
            a, b = f.flatten(1).double(), m.flatten(1).double()  # |f - m|^2 = |f|^2 - 2 f.m + |m|^2
            d = (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)[None]) / a.shape[1]
            total = d if total is None else total + d
        return total.argmin(1)

    def select(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each level concatenated with its squared difference to the nearest memory sample: ``[f, (m - f)^2]``."""
        idx = self.nearest(features)
        return [torch.cat([f, (self.bank(i)[idx] - f) ** 2], 1) for i, f in enumerate(features)]


# -- fusion and decoder -----------------------------------------------------------------------------------------
class CoordAtt(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021), as MemSeg's ``coordatt.py``: reduction 32, min 8."""

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        mip = max(8, channels // reduction)
        self.conv1, self.bn1, self.act = nn.Conv2d(channels, mip, 1), nn.BatchNorm2d(mip), nn.Hardswish()
        self.conv_h, self.conv_w = nn.Conv2d(mip, channels, 1), nn.Conv2d(mip, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x_h = x.mean(3, keepdim=True)  # [B,C,H,1]
        x_w = x.mean(2, keepdim=True).transpose(2, 3)  # [B,C,W,1]
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], 2))))
        y_h, y_w = torch.split(y, [h, w], 2)
        return x * self.conv_w(y_w.transpose(2, 3)).sigmoid() * self.conv_h(y_h).sigmoid()


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def _up2() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)


class MSFFBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.attn = _conv(c, c), CoordAtt(c)
        self.conv2 = nn.Sequential(_conv(c, c // 2), _conv(c // 2, c // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) * self.attn(x))


class MSFF(nn.Module):
    """Multi-scale feature fusion with the difference-driven spatial attention (see the module docstring)."""

    def __init__(self, c1: int, c2: int, c3: int) -> None:
        super().__init__()
        self.c = (c1, c2, c3)
        self.blk1, self.blk2, self.blk3 = MSFFBlock(2 * c1), MSFFBlock(2 * c2), MSFFBlock(2 * c3)
        self.up = _up2()
        self.up32 = nn.Sequential(_up2(), _conv(c3, c2))
        self.up21 = nn.Sequential(_up2(), _conv(c2, c1))

    def attention(self, concat: list[torch.Tensor]) -> list[torch.Tensor]:
        """Spatial masks [B,1,h,w] per level: the mean of the difference half, times the coarser mask upsampled."""
        (f1, f2, f3), (c1, c2, c3) = concat, self.c
        m3 = f3[:, c3:].mean(1, keepdim=True)
        m2 = f2[:, c2:].mean(1, keepdim=True) * self.up(m3)
        m1 = f1[:, c1:].mean(1, keepdim=True) * self.up(m2)
        return [m1, m2, m3]

    def forward(self, concat: list[torch.Tensor]) -> list[torch.Tensor]:
        f1, f2, f3 = concat
        k1, k2, k3 = self.blk1(f1), self.blk2(f2), self.blk3(f3)
        f2f = k2 + self.up32(k3)
        f1f = k1 + self.up21(f2f)
        m1, m2, m3 = self.attention(concat)
        return [f1f * m1, f2f * m2, k3 * m3]


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_up2(), _conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU())


class MemSegDecoder(nn.Module):
    """From level 4 up, fusing fused levels 3, 2, 1 and the stem; 2-channel logits at full size."""

    def __init__(self, channels: tuple[int, ...], head: int = 48) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = channels
        self.up3, self.up2, self.up1 = _up_block(c4, c3), _up_block(2 * c3, c2), _up_block(2 * c2, c1)
        self.up0, self.conv0 = _up_block(2 * c1, head), _conv(c0, head)
        self.up_mask, self.out = _up_block(2 * head, head), _conv(head, 2)

    def forward(self, top: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        f0, f1, f2, f3 = skips
        x = torch.cat([self.up3(top), f3], 1)
        x = torch.cat([self.up2(x), f2], 1)
        x = torch.cat([self.up1(x), f1], 1)
        x = torch.cat([self.up0(x), self.conv0(f0)], 1)
        return self.out(self.up_mask(x))


class MemSegNet(nn.Module):
    def __init__(self, encoder: Pyramid, memory: MemoryBank, head_width: int = 48) -> None:
        super().__init__()
        self.encoder, self.memory = encoder, memory
        c = encoder.channels
        self.msff = MSFF(c[1], c[2], c[3])
        self.decoder = MemSegDecoder(c, head_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x)
        fused = self.msff(self.memory.select(f[1:4]))
        return self.decoder(f[4], [f[0], *fused])


def memseg_focal_loss(prob: torch.Tensor, target: torch.Tensor, gamma: float = 4.0, smooth: float = 1e-5) -> torch.Tensor:
    """MemSeg's focal loss on softmax probabilities ``[B,2,H,W]``: per pixel
    ``sum_c -(1 - p_c)^gamma * clamp(onehot_c, smooth, 1 - smooth) * log(p_c + 1e-5)``, mean over pixels."""
    p = prob.permute(0, 2, 3, 1).reshape(-1, prob.shape[1])
    one_hot = F.one_hot(target.reshape(-1).long(), prob.shape[1]).to(p.dtype).clamp(smooth, 1.0 - smooth)
    return (-(1 - p).pow(gamma) * one_hot * (p + 1e-5).log()).sum(1).mean()


def warmup_cosine(steps: int, lr: float, min_lr: float, warmup_ratio: float):
    """MemSeg's ``CosineAnnealingWarmupRestarts`` over one cycle, as a LambdaLR factor on ``lr``: the k-th
    update uses ``min + (lr - min) k / w`` for k < w = int(steps * warmup_ratio), then
    ``min + (lr - min) (1 + cos(pi (k - w) / (steps - w))) / 2``."""
    warm = int(steps * warmup_ratio)

    def factor(k: int) -> float:
        if k < warm:
            v = min_lr + (lr - min_lr) * k / warm
        else:
            v = min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (k - warm) / max(steps - warm, 1))) / 2
        return v / lr

    return factor


class MemSegDetector(Detector):
    name = "memseg"

    def __init__(self, net: MemSegNet, size: int, config: dict[str, Any]) -> None:
        super().__init__(size, config)
        self.net = net
        self.top_k = top_k_for(size, int(config.get("top_k", 100)))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).softmax(1)[:, 1:]

    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        return top_k_mean(maps, self.top_k)


def build_memory(encoder: Pyramid, normals: torch.Tensor, n_memory: int, g: torch.Generator,
                 device: str = "cpu") -> tuple[MemoryBank, torch.Tensor]:
    """``n_memory`` normals drawn without replacement from ``g``, their level 1-3 features in eval mode,
    one image at a time as the official ``MemoryBank.update`` (so the same image alone gives the same bits)."""
    idx = torch.randperm(len(normals), generator=g)[:min(n_memory, len(normals))]
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        parts = [encoder(normals[int(i)][None].to(device), upto=3)[1:4] for i in idx]
    encoder.train(was)
    return MemoryBank([torch.cat([p[lv] for p in parts]) for lv in range(3)]), idx


def train(normals: torch.Tensor, synthetic: SyntheticSet, cfg: Config, *, seed: int, device: str = "cpu",
          callback: Callback | None = None, eval_every: int = 0) -> MemSegDetector:
    """Memory bank, then the fusion + decoder (and the encoder's stem and level 4) on the Trainer."""
    from anoplug.train import Trainer

    if len(normals) == 0:
        raise ValueError("the memseg pipeline needs normal training images")
    g = torch.Generator().manual_seed(seed)
    encoder = build_pyramid(cfg.backbone, pretrained=True).to(device)
    for i, level in enumerate(encoder.levels):
        level.requires_grad_(i in (0, 4))  # official: layer1-3 frozen, the stem and layer4 train
    memory, memory_index = build_memory(encoder, normals, cfg.n_memory, g, device)
    with torch.random.fork_rng(devices=[]):
        net = MemSegNet(encoder, memory, cfg.head_width)
        torch_default_init(net.msff, g)
        torch_default_init(net.decoder, g)
    det = MemSegDetector(net, cfg.size, {**asdict(cfg), "memory_index": memory_index.tolist()}).to(device)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup_ratio))

    def step_fn(ctx) -> dict:
        lr = lr_of(opt)
        image, _, mask = (t.to(device) for t in draw_batch(ctx.generator, normals, synthetic, cfg.batch_size,
                                                               cfg.anomaly_prob))
        prob = net(image).softmax(1)
        l1 = F.l1_loss(prob[:, 1:], mask)
        focal = memseg_focal_loss(prob, mask, cfg.focal_gamma)
        return {"loss": cfg.l1_weight * l1 + cfg.focal_weight * focal, "l1": l1, "focal": focal, "lr": lr}

    def on_update(done: int, total: int, row: dict) -> None:
        if callback is not None and eval_every and done % eval_every == 0:
            callback(done, det)

    det.history = Trainer({"memseg": net}, {"memseg": opt}, step_fn, steps=cfg.steps, generator=g,
                          schedulers={"memseg": sched}, device=device, progress=on_update, desc="memseg").fit()
    return det
