"""The downstream detector: DRAEM's discriminative U-Net, trained from scratch with focal loss.

This is the detector of the AnomalyDiffusion / ASBench "localization" protocol: an image
goes in (3 channels), a two-class softmax map comes out, and training mixes real normal
images (empty masks) with synthetic anomalies (their masks). ``base_width`` 64 is the
paper's size; CPU runs use a narrower network and say so. It is the ``ad-unet`` pipeline of
:mod:`anoplug_metrics.pipelines`, which also holds ASBench's DRAEM, DeSTSeg and MemSeg detectors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiscriminativeUNet", "focal_loss", "train_detector", "predict_maps"]


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                         nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DiscriminativeUNet(nn.Module):
    """Six encoder blocks (widths w, 2w, 4w, 8w, 8w, 8w; five 2x poolings) and a skip-connected decoder.

    The input side must be a multiple of 32. Output: logits ``[B, 2, H, W]``.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2, base_width: int = 64) -> None:
        super().__init__()
        w = base_width
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.enc = nn.ModuleList()
        cin = in_channels
        for c in widths:
            self.enc.append(_double_conv(cin, c))
            cin = c
        # Decoder: from the bottleneck up, each step upsamples, then fuses the matching encoder block.
        dec = [(8 * w, 8 * w, 8 * w), (8 * w, 4 * w, 8 * w), (4 * w, 2 * w, 4 * w), (2 * w, w, 2 * w), (w, w, w)]
        self.up = nn.ModuleList(_up_conv(cin, cout) for cin, cout, _ in dec)
        self.fuse = nn.ModuleList(_double_conv(cout + skip, cout) for _, cout, skip in dec)
        self.head = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"DiscriminativeUNet needs sides divisible by 32, got {tuple(x.shape[-2:])}")
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            x = fuse(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """DRAEM's focal loss on the softmax: -(1 - p_t)^gamma log p_t with label smoothing ``smooth``."""
    prob = logits.softmax(1)
    one_hot = torch.cat([1 - target, target], 1).clamp(smooth, 1.0 - smooth)
    pt = (one_hot * prob).sum(1) + smooth
    return (-(1 - pt).pow(gamma) * pt.log()).mean()


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))


def _init_weights(model: nn.Module, g: torch.Generator) -> nn.Module:
    """PyTorch's default conv initialisation, drawn from ``g`` instead of the global RNG."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5, generator=g)
                bound = 1.0 / m.weight[0].numel() ** 0.5
                m.bias.uniform_(-bound, bound, generator=g)
    return model


def train_detector(normals: torch.Tensor, anomalies: torch.Tensor, masks: torch.Tensor, *, steps: int, batch_size: int = 8,
                   lr: float = 1e-4, base_width: int = 64, anomaly_prob: float = 0.5, gamma: float = 2.0, seed: int = 0,
                   device: str = "cpu", callback: Callable[[int, nn.Module], None] | None = None,
                   eval_every: int = 0) -> tuple[DiscriminativeUNet, list[float]]:
    """Train from scratch; each sample is a synthetic anomaly with probability ``anomaly_prob``, else a clean normal.

    Adam(lr), MultiStepLR at 80 % and 90 % of ``steps`` with gamma 0.2 (the DRAEM schedule), run by
    :class:`anoplug.train.Trainer` (the one training loop of anoplug; same weights as the former
    hand-written loop, bit for bit). ``callback(step, model)`` runs after every ``eval_every``-th
    update (for opt-in checkpoint selection).
    Every draw (initial weights, which samples, which are synthetic) comes from ``seed``; the global
    RNG is neither used nor advanced. The result is bit-reproducible for a fixed device and thread
    count, but not across thread counts: the conv backward sums in a thread-dependent order, and
    training amplifies that last-bit difference into a different detector (see ``utility.py``).
    """
    from anoplug.train import Trainer

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the constructor's default init draws from (and would advance) the global RNG
        model = _init_weights(DiscriminativeUNet(3, 2, base_width), g).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(steps * 0.8), int(steps * 0.9)], gamma=0.2)
    n_norm, n_anom = len(normals), len(anomalies)
    if n_norm == 0:
        raise ValueError("downstream utility needs normal training images")

    def step_fn(ctx) -> torch.Tensor:
        """One batch: each sample a synthetic anomaly (with its mask) with probability ``anomaly_prob``, else a normal."""
        is_anom = (torch.rand(batch_size, generator=ctx.generator) < anomaly_prob) & (n_anom > 0)
        i_norm = torch.randint(n_norm, (batch_size,), generator=ctx.generator)
        i_anom = torch.randint(max(n_anom, 1), (batch_size,), generator=ctx.generator)
        img = normals[i_norm].clone()
        tgt = torch.zeros(batch_size, 1, *img.shape[-2:])
        if n_anom:
            sel = is_anom.view(-1, 1, 1, 1)
            img = torch.where(sel, anomalies[i_anom], img)
            tgt = torch.where(sel, masks[i_anom], tgt)
        return focal_loss(model(img.to(device)), tgt.to(device), gamma)

    def on_update(done: int, total: int, row: dict) -> None:
        if callback is not None and eval_every and done % eval_every == 0:
            callback(done, model)

    history = Trainer({"model": model}, {"model": opt}, step_fn, steps=steps, generator=g, schedulers={"model": sched},
                      device=device, progress=on_update, desc="detector").fit()
    return model, [float(row["loss"]) for row in history]


@torch.no_grad()
def predict_maps(model: nn.Module, images: torch.Tensor, batch_size: int = 16, device: str = "cpu") -> torch.Tensor:
    """Anomaly probability maps ``[B, 1, H, W]`` (softmax channel 1)."""
    was_training = model.training
    model.eval()
    out = [model(images[i:i + batch_size].to(device)).softmax(1)[:, 1:].cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 1, *images.shape[-2:])
