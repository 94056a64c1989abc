"""``draem``: DRAEM's two sub-networks (Zavrtanik et al., ICCV 2021), as ASBench runs them.

1. The *reconstructive* sub-network, an encoder-decoder without skips, maps the augmented image
   back to the clean one: loss L2 + (1 - SSIM) against the clean image.
2. The *discriminative* sub-network, the U-Net of ``detector.py`` with 6 input channels, sees the
   reconstruction and the augmented image side by side (``cat(reconstruction, image)``, in that
   order) and segments the anomaly: DRAEM's focal loss (gamma 2) on its softmax.
Both train together with one Adam (lr 1e-4), MultiStepLR x0.2 at 80 % and 90 %, batch 8, 700
epochs of the normal set (ASBench's command line), weights N(0, 0.02) as DRAEM's ``weights_init``.
At test time the map is the softmax channel 1; the image score is the max of the 21x21
mean-filtered map.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from anoplug_metrics.detector import DiscriminativeUNet, focal_loss
from anoplug_metrics.pipelines._common import Callback, Detector, SyntheticSet, draw_batch, lr_of, max_mean_filtered
from anoplug_metrics.weak import weak_focal_loss

__all__ = ["Config", "ReconstructiveNet", "DraemDetector", "draem_ssim", "draem_init", "train"]


@dataclass(frozen=True)
class Config:
    """Official values (``DRAEM/train_DRAEM.py`` of ASBench and VitjanZ/DRAEM; see the README)."""

    steps: int | None = None  # None: `epochs` passes over the normals, ceil(N / batch) steps each (DataLoader)
    epochs: int = 700
    batch_size: int = 8
    size: int = 256
    anomaly_prob: float = 0.5
    lr: float = 1e-4
    base_width: int = 64  # discriminative sub-network
    rec_width: int = 128  # reconstructive sub-network
    focal_gamma: float = 2.0
    weak_p_cutoff: float | None = None  # AnoGen's box supervision (anoplug_metrics.weak), e.g. 0.1; None = off

    CPU: ClassVar[dict[str, Any]] = {"steps": 300, "base_width": 8, "rec_width": 16, "lr": 1e-3, "size": 128}

    def total_steps(self, n_normals: int) -> int:
        return self.steps if self.steps is not None else self.epochs * math.ceil(n_normals / self.batch_size)


def _double_conv(cin: int, mid: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                         nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True))


class ReconstructiveNet(nn.Module):
    """DRAEM's reconstructive sub-network: 5 encoder blocks (w, 2w, 4w, 8w, 8w; 4 poolings), then 4
    upsampling steps back to full size *without* skip connections, and a 3x3 conv to 3 channels
    (no output activation). Sides must be multiples of 16."""

    def __init__(self, base_width: int = 128, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        w = base_width
        self.enc = nn.ModuleList([_double_conv(in_channels, w, w), _double_conv(w, 2 * w, 2 * w),
                                  _double_conv(2 * w, 4 * w, 4 * w), _double_conv(4 * w, 8 * w, 8 * w),
                                  _double_conv(8 * w, 8 * w, 8 * w)])
        # Decoder stage k: upsample + conv at the incoming width, then two convs narrowing to the next width.
        plan = [(8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w)]
        self.up = nn.ModuleList(_up(c) for c, _ in plan)
        self.dec = nn.ModuleList(_double_conv(c, c, cout) for c, cout in plan)
        self.out = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"ReconstructiveNet needs sides divisible by 16, got {tuple(x.shape[-2:])}")
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
        for up, dec in zip(self.up, self.dec):
            x = dec(up(x))
        return self.out(x)


def draem_init(model: nn.Module, g: torch.Generator) -> nn.Module:
    """DRAEM's ``weights_init``: conv weights N(0, 0.02), batch-norm weights N(1, 0.02) and biases 0;
    conv biases keep PyTorch's default law (uniform +-1/sqrt(fan_in)), all drawn from ``g``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, 0.02, generator=g)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.weight[0].numel())
                    m.bias.uniform_(-bound, bound, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.02, generator=g)
                m.bias.zero_()
    return model


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    w = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    w = w / w.sum()
    return (w[:, None] @ w[None, :]).expand(channels, 1, size, size).contiguous()


def draem_ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAEM's SSIM: ``(mean SSIM, SSIM map)`` with an 11x11 Gaussian window (sigma 1.5) per channel,
    *zero* "same" padding, and the dynamic range read off ``img1`` (the reconstruction): the top is
    255 if ``img1.max() > 128`` else 1, the bottom -1 if ``img1.min() < -0.5`` else 0."""
    top = 255.0 if float(img1.detach().max()) > 128 else 1.0
    bottom = -1.0 if float(img1.detach().min()) < -0.5 else 0.0
    rng = top - bottom
    c = img1.shape[1]
    win = _gaussian_window(window_size, 1.5, c).to(img1)
    pad = window_size // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, padding=pad, groups=c)

    mu1, mu2 = blur(img1), blur(img2)
    s11, s22, s12 = blur(img1 * img1) - mu1 ** 2, blur(img2 * img2) - mu2 ** 2, blur(img1 * img2) - mu1 * mu2
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return ssim_map.mean(), ssim_map


def draem_loss(reconstruction: torch.Tensor, clean: torch.Tensor, seg_logits: torch.Tensor, mask: torch.Tensor,
               gamma: float, weak_p_cutoff: float | None = None) -> dict[str, torch.Tensor]:
    """``L2(rec, clean) + (1 - SSIM(rec, clean)) + focal(softmax(seg), mask)``, with the three terms
    (the focal term under AnoGen's weak loss mask when ``weak_p_cutoff`` is set)."""
    l2 = F.mse_loss(reconstruction, clean)
    ssim = 1.0 - draem_ssim(reconstruction, clean)[0]
    focal = focal_loss(seg_logits, mask, gamma) if weak_p_cutoff is None else \
        weak_focal_loss(seg_logits, mask, gamma, weak_p_cutoff)
    return {"loss": l2 + ssim + focal, "l2": l2, "ssim": ssim, "focal": focal}


class DraemDetector(Detector):
    """Reconstruct, then segment ``cat(reconstruction, image)``; score = max of the 21x21 mean-filtered map."""

    name = "draem"

    def __init__(self, rec: ReconstructiveNet, seg: DiscriminativeUNet, size: int, config: dict[str, Any]) -> None:
        super().__init__(size, config)
        self.rec, self.seg = rec, seg

    def segment(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, segmentation logits [B,2,H,W]) of ``images``."""
        rec = self.rec(images)
        return rec, self.seg(torch.cat([rec, images], 1))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.segment(images)[1].softmax(1)[:, 1:]

    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        return max_mean_filtered(maps)


def train(normals: torch.Tensor, synthetic: SyntheticSet, cfg: Config, *, seed: int, device: str = "cpu",
          callback: Callback | None = None, eval_every: int = 0) -> DraemDetector:
    """Train both sub-networks from scratch on the Trainer; every draw comes from ``seed``."""
    from anoplug.train import Trainer

    if len(normals) == 0:
        raise ValueError("the draem pipeline needs normal training images")
    if len(synthetic) and synthetic.clean is None:
        raise ValueError("the draem pipeline reconstructs the clean image: the synthetic set needs `clean`")
    steps = cfg.total_steps(len(normals))
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # default constructors draw from the global RNG: keep it untouched
        rec = draem_init(ReconstructiveNet(cfg.rec_width), g)
        seg = draem_init(DiscriminativeUNet(6, 2, cfg.base_width), g)
    det = DraemDetector(rec, seg, cfg.size, {**asdict(cfg), "steps": steps}).to(device)
    opt = torch.optim.Adam([{"params": rec.parameters(), "lr": cfg.lr}, {"params": seg.parameters(), "lr": cfg.lr}])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(steps * 0.8), int(steps * 0.9)], gamma=0.2)

    def step_fn(ctx) -> dict:
        lr = lr_of(opt)
        image, clean, mask = (t.to(device) for t in draw_batch(ctx.generator, normals, synthetic, cfg.batch_size,
                                                                   cfg.anomaly_prob))
        reconstruction, logits = det.segment(image)
        return {**draem_loss(reconstruction, clean, logits, mask, cfg.focal_gamma, cfg.weak_p_cutoff), "lr": lr}

    def on_update(done: int, total: int, row: dict) -> None:
        if callback is not None and eval_every and done % eval_every == 0:
            callback(done, det)

    det.history = Trainer({"rec": rec, "seg": seg}, {"draem": opt}, step_fn, steps=steps, generator=g,
                          schedulers={"draem": sched}, device=device, progress=on_update, desc="draem").fit()
    return det
