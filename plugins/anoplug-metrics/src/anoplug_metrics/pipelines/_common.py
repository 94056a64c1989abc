"""What the four detection pipelines share: the training data, ASBench's sampling rule, seeded
initialisation, the image scores, and the :class:`Detector` every pipeline returns.

ASBench decouples synthesis from detection: a pipeline trains on real normal images plus a set of
synthetic anomalies drawn *beforehand* by an anoplug generator (the ``downstream-utility``
evaluator receives them as its ``generated`` batch). Each training sample is, with probability
``anomaly_prob`` (ASBench's ``percent``), one synthetic triple (anomalous image, its mask, the
clean normal it was made from), otherwise a real normal with an empty mask — ASBench's
``MVTecDRAEMTrainDataset_AD`` rule for pre-generated sets. DRAEM's reconstruction target and
DeSTSeg's teacher input are the *clean* image, so those two pipelines need the pairing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SyntheticSet", "Detector", "draw_batch", "match_sources", "resize_images", "resize_masks",
           "max_mean_filtered", "top_k_mean", "top_k_for", "torch_default_init", "lr_of"]


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to ``size``² (a no-op, the same tensor, when already that size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def resize_masks(m: torch.Tensor, size: int) -> torch.Tensor:
    """Masks to ``size``² and {0, 1}: bilinear, then >= 0.5 (as the evaluator binarises them)."""
    if m.shape[-1] == size and m.shape[-2] == size:
        return (m >= 0.5).float()
    return (F.interpolate(m.float(), size=(size, size), mode="bilinear", align_corners=False) >= 0.5).float()


@dataclass(frozen=True)
class SyntheticSet:
    """Pre-generated anomalies: ``images`` [N,3,H,W] in [0,1], ``masks`` [N,1,H,W] in {0,1}, and
    ``clean`` [N,3,H,W], the normal image each one was made from (None when unknown; DRAEM and
    DeSTSeg need it)."""

    images: torch.Tensor
    masks: torch.Tensor
    clean: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"synthetic images must be [N,3,H,W], got {tuple(self.images.shape)}")
        if tuple(self.masks.shape) != (n, 1, *self.images.shape[-2:]):
            raise ValueError(f"synthetic masks must be [N,1,H,W] like the images, got {tuple(self.masks.shape)}")
        if self.clean is not None and self.clean.shape != self.images.shape:
            raise ValueError(f"clean images {tuple(self.clean.shape)} must match the synthetic images "
                             f"{tuple(self.images.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def empty(cls, like: torch.Tensor) -> SyntheticSet:
        """No synthetic anomaly (the normals-only baseline), shaped like the normals ``like``."""
        return cls(like[:0], torch.zeros(0, 1, *like.shape[-2:]), like[:0])

    def resized(self, size: int) -> SyntheticSet:
        clean = None if self.clean is None else resize_images(self.clean, size)
        return SyntheticSet(resize_images(self.images, size), resize_masks(self.masks, size), clean)


def draw_batch(g: torch.Generator, normals: torch.Tensor, synthetic: SyntheticSet, batch_size: int,
               anomaly_prob: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch ``(image, clean, mask)`` by ASBench's rule (see the module docstring).

    The draws are those of the AD U-Net's loop (``detector.train_detector``): which samples are
    synthetic, then a normal index and a synthetic index per sample, all from ``g``. A normal
    sample is its own clean target with an empty mask.
    """
    n_norm, n_syn = len(normals), len(synthetic)
    is_anom = (torch.rand(batch_size, generator=g) < anomaly_prob) & (n_syn > 0)
    i_norm = torch.randint(n_norm, (batch_size,), generator=g)
    i_syn = torch.randint(max(n_syn, 1), (batch_size,), generator=g)
    image = normals[i_norm].clone()
    clean = image.clone()
    mask = torch.zeros(batch_size, 1, *image.shape[-2:])
    if n_syn:
        sel = is_anom.view(-1, 1, 1, 1)
        image = torch.where(sel, synthetic.images[i_syn], image)
        mask = torch.where(sel, synthetic.masks[i_syn], mask)
        if synthetic.clean is not None:
            clean = torch.where(sel, synthetic.clean[i_syn], clean)
    return image, clean, mask


def match_sources(images: torch.Tensor, masks: torch.Tensor, normals: torch.Tensor,
                  generated_meta: list[dict] | None = None, normals_meta: list[dict] | None = None,
                  ) -> tuple[torch.Tensor, str]:
    """The clean normal of each generated image, and how it was found.

    1. ``"meta"``: every generated sample's ``meta["source"]`` names a normal's ``meta["source"]``
       (anoplug's driver copies the input's source into each sample's meta);
    2. ``"nearest"`` (*our assumption*, when the metadata do not pair them): the normal closest in
       mean squared difference over the pixels *outside* the mask, which is exact for every
       generator that leaves the rest of the image untouched (DRAEM, CutPaste, NSA, ...).
    """
    if len(images) == 0:
        return normals[:0], "none"
    if generated_meta and normals_meta and len(generated_meta) == len(images):
        index = {m.get("source"): j for j, m in enumerate(normals_meta) if m and m.get("source") is not None}
        hits = [index.get((m or {}).get("source")) for m in generated_meta]
        if all(h is not None for h in hits):
            return normals[torch.tensor(hits, dtype=torch.long)], "meta"
    keep = 1.0 - masks.float()
    flat_g = (images * keep).flatten(1)
    weight = keep.expand_as(images).flatten(1)
    best = []
    for i in range(len(images)):  # one generated image at a time: memory stays [N_normals, C*H*W]
        d = (((normals.flatten(1) * weight[i]) - flat_g[i]) ** 2).sum(1) / weight[i].sum().clamp_min(1.0)
        best.append(int(d.argmin()))
    return normals[torch.tensor(best, dtype=torch.long)], "nearest"


# -- image scores -------------------------------------------------------------------------------------
def max_mean_filtered(maps: torch.Tensor, filter_size: int = 21) -> torch.Tensor:
    """DRAEM's image score: max of the map after a ``filter_size``² mean filter (zero padding counted)."""
    from anoplug.metrics import image_scores

    return torch.from_numpy(image_scores(maps, filter_size)).float()


def top_k_for(size: int, k_at_256: int = 100) -> int:
    """DeSTSeg's / MemSeg's T = 100 pixels at 256², kept as the same *fraction* of the image at other
    sides (*our assumption*: the official code only runs at 256²)."""
    return max(1, round(k_at_256 * size * size / (256 * 256)))


def top_k_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """DeSTSeg's / MemSeg's image score: mean of the ``k`` highest map values of each image."""
    flat = maps.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(1)


# -- seeded initialisation -----------------------------------------------------------------------------
def torch_default_init(model: nn.Module, g: torch.Generator) -> nn.Module:
    """PyTorch's default initialisation of every conv / linear layer (kaiming-uniform, a = sqrt 5, and the
    uniform bias), drawn from ``g`` instead of the global RNG; norm layers to weight 1, bias 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.weight[0].numel())
                    m.bias.uniform_(-bound, bound, generator=g)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model


def lr_of(opt: torch.optim.Optimizer) -> float:
    """The first parameter group's current learning rate (logged every step, so schedules are visible)."""
    return float(opt.param_groups[0]["lr"])


# -- the trained detector ---------------------------------------------------------------------------------
class Detector(nn.Module):
    """A trained pipeline: ``predict(images) -> (maps [B,1,H,W] in [0,1], image scores [B])``.

    Subclasses implement :meth:`anomaly_map` (images at the training side ``size``) and
    :meth:`image_score` (the pipeline's own pooling of the map into one number per image).
    ``config`` is the full resolved configuration, ``history`` the Trainer's loss rows.
    """

    name: ClassVar[str] = ""

    def __init__(self, size: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.size = int(size)
        self.config = dict(config)
        self.history: list[dict] = []

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps at the input's side and image scores, in eval mode, ``batch_size`` images at a time.

        Inputs of another side are resized to the training side; the score is computed there (as the
        official code scores at its training resolution) and the map is resized back.
        """
        if len(images) == 0:
            return torch.zeros(0, 1, *images.shape[-2:]), torch.zeros(0)
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        maps, scores = [], []
        try:
            for i in range(0, len(images), batch_size):
                x = images[i:i + batch_size].to(device)
                m = self.anomaly_map(resize_images(x, self.size)).float().cpu()
                scores.append(self.image_score(m))
                if m.shape[-2:] != images.shape[-2:]:
                    m = F.interpolate(m, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
                maps.append(m)
        finally:
            self.train(was)
        return torch.cat(maps), torch.cat(scores)


Callback = Callable[[int, Detector], None]
