"""``destseg``: DeSTSeg (Zhang et al., CVPR 2023, apple/ml-destseg), as ASBench runs it.

- **Teacher**: a frozen pretrained backbone, levels /4, /8, /16 (ResNet-18 ``layer1..3``).
- **Denoising student**: a randomly initialised ResNet-18 up to /32 (``layer4``; random weights need
  no download, so this is the official student whatever the teacher), then a decoder of ResNet
  basic blocks (2 per stage) back to the teacher's three levels and widths. It sees the *augmented*
  image and is trained to output the teacher's features of the *clean* image: the loss is the
  cosine distance ``1 - <s^, t^>`` of the L2-normalised features, summed over the batch and the
  three levels, averaged over positions (the official ``cosine_similarity_loss``).
- **Segmentation network**: on ``-t^ * s^`` of the augmented image (the element-wise product of the
  normalised teacher and student features, all levels resized to /4 and concatenated), two basic
  blocks to 256 channels, ASPP (rates 6, 12, 18), a 3x3 conv and a 1x1 conv to one sigmoid map at
  /4. Loss: focal (gamma 4, on the sigmoid; torchvision's ``sigmoid_focal_loss`` without alpha) +
  L1 against the mask resized to /4 and binarised at 0.5.
- **Schedule** (official ``train.py``): 5000 steps of batch 32; the first 1000 train only the
  student (SGD lr 0.4, momentum 0.9, weight decay 1e-4), the rest only the segmentation network
  (SGD, lr 0.1 for the blocks and 0.01 for the ASPP head); the frozen half stays in eval mode.
- **Inference**: the map upsampled to the image; image score = mean of the 100 highest pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

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

__all__ = ["Config", "BasicBlock", "ASPP", "Student", "SegmentationNet", "DestsegDetector", "cosine_distance_loss",
           "l2_normalize", "train"]


@dataclass(frozen=True)
class Config:
    """Official values (apple/ml-destseg ``train.py`` = ASBench ``destseg/train.py``; see the README)."""

    steps: int = 5000
    de_st_fraction: float = 0.2  # the first 1000 of 5000 steps train the student
    batch_size: int = 32
    size: int = 256
    anomaly_prob: float = 0.5  # ASBench's axis; its DeSTSeg example runs use percent 1
    lr_de_st: float = 0.4
    lr_res: float = 0.1
    lr_seghead: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    focal_gamma: float = 4.0
    seg_width: int = 256
    top_k: int = 100  # T at 256², the same fraction of the image at other sides
    backbone: str = "efficientnet-lite0"  # the teacher; official: resnet18 (needs its ImageNet file offline)

    CPU: ClassVar[dict[str, Any]] = {"steps": 300, "batch_size": 8, "seg_width": 64, "size": 128}

    @property
    def de_st_steps(self) -> int:
        return int(round(self.steps * self.de_st_fraction))


# -- layers ------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet's basic block (3x3-BN-ReLU-3x3-BN + identity, a 1x1 conv-BN shortcut when widths differ)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
                         if cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


def res_layer(cin: int, cout: int, blocks: int = 2) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout), *(BasicBlock(cout, cout) for _ in range(blocks - 1)))


def _cbr(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: global-pool branch + three dilated 3x3 branches, fused by a 3x3 conv."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _cbr(cin, cout, 1))
        self.branches = nn.ModuleList(_cbr(cin, cout, 3, r) for r in rates)
        self.fuse = _cbr((1 + len(rates)) * cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([pooled, *(b(x) for b in self.branches)], 1))


def kaiming_fan_out_init(model: nn.Module, g: torch.Generator) -> nn.Module:
    """DeSTSeg's (and timm ResNet's) init: conv weights kaiming-normal (fan-out, ReLU), norms 1 / 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model


class Student(nn.Module):
    """Random-init encoder to /32, then basic-block decoders to the teacher's /4, /8, /16 widths ``out``."""

    def __init__(self, encoder: Pyramid, out: tuple[int, int, int]) -> None:
        super().__init__()
        self.encoder = encoder
        c4 = encoder.channels[4]
        self.dec4 = res_layer(c4, c4)
        self.dec3, self.dec2, self.dec1 = res_layer(c4, out[2]), res_layer(out[2], out[1]), res_layer(out[1], out[0])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.encoder(x)
        b3 = self.dec3(F.interpolate(self.dec4(f[4]), size=f[3].shape[-2:], mode="bilinear", align_corners=False))
        b2 = self.dec2(F.interpolate(b3, size=f[2].shape[-2:], mode="bilinear", align_corners=False))
        b1 = self.dec1(F.interpolate(b2, size=f[1].shape[-2:], mode="bilinear", align_corners=False))
        return [b1, b2, b3]


class SegmentationNet(nn.Module):
    """Two basic blocks to ``width``, ASPP, 3x3 conv-BN-ReLU, 1x1 conv to one logit map."""

    def __init__(self, cin: int, width: int = 256) -> None:
        super().__init__()
        self.res = res_layer(cin, width)
        self.head = nn.Sequential(ASPP(width, width), _cbr(width, width, 3), nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.res(x))


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide by the channel L2 norm (+ eps), as DeSTSeg's ``l2_normalize``."""
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)


def cosine_distance_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Sum over levels of ``sum_batch,positions (1 - <s^, t^>) / (h w)``: DeSTSeg's cosine_similarity_loss."""
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        total = total + (1 - (s * t).sum(1)).sum() / (s.shape[-2] * s.shape[-1])
    return total


# -- the detector ----------------------------------------------------------------------------------------------
class DestsegDetector(Detector):
    """Teacher, denoising student and segmentation network; map = sigmoid at /4 upsampled; score = top-k mean."""

    name = "destseg"

    def __init__(self, teacher: Pyramid, student: Student, seg: SegmentationNet, size: int,
                 config: dict[str, Any]) -> None:
        super().__init__(size, config)
        self.teacher, self.student, self.seg = teacher, student, seg
        self.teacher.train(False)
        self.top_k = top_k_for(size, int(config.get("top_k", 100)))

    def train(self, mode: bool = True) -> DestsegDetector:
        super().train(mode)
        self.teacher.train(False)  # the teacher is always in eval mode (official TeacherNet.forward)
        return self

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [l2_normalize(f) for f in self.teacher(x, upto=3)[1:4]]

    def student_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [l2_normalize(f) for f in self.student(x)]

    def seg_input(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        """``-t^ * s^`` per level, resized to the /4 level and concatenated over channels."""
        size = student[0].shape[-2:]
        return torch.cat([F.interpolate(-t * s, size=size, mode="bilinear", align_corners=False)
                          for t, s in zip(teacher, student)], 1)

    def seg_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.seg(self.seg_input(self.teacher_features(images), self.student_features(images)))

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        prob = self.seg_logits(images).sigmoid()
        return F.interpolate(prob, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        return top_k_mean(maps, self.top_k)


def _student_encoder(g: torch.Generator) -> Pyramid:
    """The student's encoder: ResNet-18 with random weights from ``g`` by timm's ResNet rule (kaiming
    fan-out, and the last BN of each basic block at 0, as ``zero_init_last``)."""
    enc = kaiming_fan_out_init(build_pyramid("resnet18", pretrained=False), g)
    with torch.no_grad():
        for m in enc.modules():
            if type(m).__name__ == "BasicBlock" and hasattr(m, "bn2"):
                m.bn2.weight.zero_()
    return enc


def train(normals: torch.Tensor, synthetic: SyntheticSet, cfg: Config, *, seed: int, device: str = "cpu",
          callback: Callback | None = None, eval_every: int = 0) -> DestsegDetector:
    """The two-stage schedule on the Trainer (manual optimisation: one optimiser per stage)."""
    from anoplug.train import Trainer

    if len(normals) == 0:
        raise ValueError("the destseg pipeline needs normal training images")
    if len(synthetic) and synthetic.clean is None:
        raise ValueError("the destseg student is taught the teacher's features of the clean image: "
                         "the synthetic set needs `clean`")
    if cfg.batch_size < 2:
        raise ValueError("destseg trains batch norm after a global pool (ASPP): batch_size must be >= 2")
    g = torch.Generator().manual_seed(seed)
    teacher = build_pyramid(cfg.backbone, pretrained=True).requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        student = Student(_student_encoder(g), teacher.channels[1:4])
        kaiming_fan_out_init(nn.ModuleList([student.dec4, student.dec3, student.dec2, student.dec1]), g)
        seg = SegmentationNet(sum(teacher.channels[1:4]), cfg.seg_width)
        kaiming_fan_out_init(seg.res, g)
        torch_default_init(seg.head, g)  # the official head is built after its init loop: PyTorch's default
    det = DestsegDetector(teacher, student, seg, cfg.size, asdict(cfg)).to(device)
    opt_st = torch.optim.SGD(student.parameters(), lr=cfg.lr_de_st, momentum=cfg.momentum,
                             weight_decay=cfg.weight_decay)
    opt_seg = torch.optim.SGD([{"params": seg.res.parameters(), "lr": cfg.lr_res},
                               {"params": seg.head.parameters(), "lr": cfg.lr_seghead}],
                              momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    de_st_steps = cfg.de_st_steps

    def step_fn(ctx) -> dict:
        image, clean, mask = (t.to(device) for t in draw_batch(ctx.generator, normals, synthetic, cfg.batch_size,
                                                                   cfg.anomaly_prob))
        if ctx.step < de_st_steps:  # stage 1: the denoising student
            student.train(True)
            seg.train(False)
            loss = cosine_distance_loss(det.student_features(image), det.teacher_features(clean))
            ctx.backward(loss)
            lr = lr_of(opt_st)
            ctx.optimizer_step("student")
            return {"loss": float(loss.detach()), "cosine": float(loss.detach()), "stage": 1, "lr": lr}
        student.train(False)  # stage 2: the segmentation network on the frozen student
        seg.train(True)
        with torch.no_grad():
            feats = det.seg_input(det.teacher_features(image), det.student_features(image))
        logits = seg(feats)
        target = (F.interpolate(mask, size=logits.shape[-2:], mode="bilinear", align_corners=False) >= 0.5).float()
        focal = sigmoid_focal_loss(logits, target, alpha=-1, gamma=cfg.focal_gamma, reduction="mean")
        l1 = F.l1_loss(logits.sigmoid(), target)
        loss = focal + l1
        ctx.backward(loss)
        lr = lr_of(opt_seg)
        ctx.optimizer_step("seg")
        return {"loss": float(loss.detach()), "focal": float(focal.detach()), "l1": float(l1.detach()),
                "stage": 2, "lr": lr}

    def on_update(done: int, total: int, row: dict) -> None:
        if callback is not None and eval_every and done % eval_every == 0:
            callback(done, det)

    det.history = Trainer({"student": student, "seg": seg}, {"student": opt_st, "seg": opt_seg}, step_fn,
                          steps=cfg.steps, generator=g, manual_optimization=True, device=device,
                          progress=on_update, desc="destseg").fit()
    return det

