"""AnoStyler's five loss terms (official ``src/def_train.py``; weights from ``config.yaml``), written anew.

    L = λ_pdir·L_patch + λ_gdir·L_global + λ_mclip·L_masked + λ_c·L_content + λ_tv·L_tv
      = 9000·…        + 500·…          + 1000·…          + 150·…          + 0.002·…

- **Patch directional** (CLIPstyler's key loss): 64 random square crops of the composite,
  each resized to CLIP's input size and warped by a random perspective (distortion 0.5);
  per crop 1 − cos(ΔI, ΔT) with ΔI = CLIP(crop) − CLIP(normal image), ΔT = T_a − T_n (both
  unit-normalised). Crops scoring below 0.7 are zeroed (they already point the right way;
  CLIPstyler's rejection keeps them from dominating). Crops are weighted by how much anomaly
  mask they contain (what the code sets out to do), normalised to sum 1, uniform when none touches it — or
  uniformly (``patch_weighting="uniform"``), which is what the released code computes (its
  crop of the ``[1,1,H,W]`` mask slices the channel axis, so the ratios are NaN and it
  falls back to uniform weights).
- **Global directional**: the same on the whole composite.
- **Masked CLIP**: 1 − cos(CLIP(composite ⊙ M), T_a) — the masked region alone must look
  like the anomaly text.
- **Content**: mean squared VGG feature difference, composite vs. normal image, ImageNet-
  normalised input. The official code uses VGG19 taps named ``conv4_2`` and ``conv5_2``;
  its ``get_features`` stores the conv output and torchvision's in-place ReLU then
  overwrites it, and its index 31 is ``relu5_2`` anyway, so it really compares ``relu4_2``
  and ``relu5_2``. Offline only VGG16 exists (``anoplug.zoo.vgg``): this uses VGG16
  ``relu4_2`` + ``relu5_2``, the same named layers of the shallower sibling.
- **TV prior**: the sum of the L2 norms (not squared) of horizontal, vertical and both
  diagonal neighbour differences of the composite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = ["CONTENT_LAYERS", "ClipJudge", "Crops", "draw_crops", "perspective_warp", "directional",
           "patch_weights", "tv_prior", "content_loss", "masked_clip"]

#: VGG16 taps of the content loss (the layers the official VGG19 code effectively compares).
CONTENT_LAYERS: tuple[str, ...] = ("relu4_2", "relu5_2")


def _pooled(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class ClipJudge:
    """A frozen CLIP as AnoStyler uses it: unit image embeddings (differentiable) and mean-pooled text sets."""

    model: Any
    tokenizer: Any
    preprocess: Any  # anoplug.zoo.clip.ClipPreprocess

    @classmethod
    def load(cls, path_or_name: str = "tiny", device: torch.device | str = "cpu") -> ClipJudge:
        """``"tiny"`` (the committed offline CLIP) or a local ``CLIPModel`` folder (the paper: ViT-B/32)."""
        from anoplug.zoo.clip import load_clip

        model, tok, prep = load_clip(path_or_name, device=device)
        return cls(model, tok, prep)

    @property
    def size(self) -> int:
        return int(self.preprocess.crop)

    def image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` unit embeddings of ``[B,3,h,w]`` images in [0,1] (resized to CLIP's input here)."""
        from anoplug.zoo.clip import encode_images

        return encode_images(self.model, self.preprocess(images))

    @torch.no_grad()
    def text_set(self, phrases: Sequence[str]) -> torch.Tensor:
        """``[1, D]``: the raw text embeddings of ``phrases`` averaged, then unit-normalised (official order)."""
        from anoplug.zoo.clip import tokenize

        device = next(self.model.parameters()).device
        feats = _pooled(self.model.get_text_features(**tokenize(self.tokenizer, phrases, device)))
        return F.normalize(feats.mean(0, keepdim=True), dim=-1)


# -- crops and augmentation ----------------------------------------------------------------------
@dataclass(frozen=True)
class Crops:
    """Top-left corners ``[N, 2]`` (y, x) of square crops of side ``size``."""

    corners: torch.Tensor
    size: int


def draw_crops(rng: torch.Generator, n: int, size: int, h: int, w: int) -> Crops:
    """``n`` crop corners, uniform over valid positions (official ``torch.randint(0, H − size + 1)``)."""
    ys = torch.randint(0, h - size + 1, (n,), generator=rng)
    xs = torch.randint(0, w - size + 1, (n,), generator=rng)
    return Crops(torch.stack([ys, xs], 1), size)


def cut(images: torch.Tensor, crops: Crops) -> torch.Tensor:
    """``[N, C, s, s]``: the crops of a single image ``[1, C, H, W]``."""
    s = crops.size
    return torch.cat([images[:, :, y:y + s, x:x + s] for y, x in crops.corners.tolist()])


def _perspective_ends(rng: torch.Generator, n: int, size: int, distortion: float) -> torch.Tensor:
    """``[n, 4, 2]`` moved corners (x, y): torchvision ``RandomPerspective.get_params``'s distribution."""
    half = size // 2
    d = int(distortion * half)
    lo = torch.randint(0, d + 1, (n, 4, 2), generator=rng)  # inward offsets per corner and axis
    far = size - 1
    base = torch.tensor([[0, 0], [far, 0], [far, far], [0, far]])
    sign = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    return (base + sign * lo).double()


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``[n, 8]`` coefficients of the projective map taking ``src`` [n,4,2] points to ``dst``."""
    n = src.shape[0]
    a = torch.zeros(n, 8, 8, dtype=torch.float64)
    b = torch.zeros(n, 8, dtype=torch.float64)
    for i in range(4):
        u, v = src[:, i, 0], src[:, i, 1]
        x, y = dst[:, i, 0], dst[:, i, 1]
        one, zero = torch.ones_like(u), torch.zeros_like(u)
        a[:, 2 * i] = torch.stack([u, v, one, zero, zero, zero, -x * u, -x * v], 1)
        a[:, 2 * i + 1] = torch.stack([zero, zero, zero, u, v, one, -y * u, -y * v], 1)
        b[:, 2 * i], b[:, 2 * i + 1] = x, y
    return torch.linalg.solve(a, b)


def perspective_warp(images: torch.Tensor, rng: torch.Generator, distortion: float = 0.5) -> torch.Tensor:
    """A random perspective per image of ``[N,3,s,s]`` (p = 1, fill 0, bilinear), batched and differentiable.

    The corner offsets follow torchvision's ``RandomPerspective(distortion_scale, p=1)``; the
    warp is one ``grid_sample`` for the whole batch (torchvision warps one image per call and
    draws from the global RNG).
    """
    n, _, s, _ = images.shape
    ends = _perspective_ends(rng, n, s, distortion)
    far = s - 1
    starts = torch.tensor([[0, 0], [far, 0], [far, far], [0, far]], dtype=torch.float64).expand(n, 4, 2)
    c = _homography(ends, starts).to(images.device)  # output pixel -> input pixel
    coords = torch.arange(s, dtype=torch.float64, device=images.device) + 0.5  # pixel centres, as torchvision
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    u, v = xx.reshape(1, -1), yy.reshape(1, -1)
    den = c[:, 6:7] * u + c[:, 7:8] * v + 1
    x = (c[:, 0:1] * u + c[:, 1:2] * v + c[:, 2:3]) / den
    y = (c[:, 3:4] * u + c[:, 4:5] * v + c[:, 5:6]) / den
    grid = torch.stack([2 * x / s - 1, 2 * y / s - 1], -1).view(n, s, s, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# -- the loss terms --------------------------------------------------------------------------------
def directional(img_emb: torch.Tensor, src_emb: torch.Tensor, text_dir: torch.Tensor) -> torch.Tensor:
    """``[N]``: 1 − cos(normalise(img − src), normalise(T_a − T_n))."""
    d_img = F.normalize(img_emb - src_emb, dim=-1)
    return 1 - (d_img * F.normalize(text_dir, dim=-1)).sum(-1)


def patch_weights(mask: torch.Tensor, crops: Crops, how: Literal["coverage", "uniform"]) -> torch.Tensor:
    """``[N]`` crop weights summing to 1: mask-coverage ratios (the code's intent) or uniform (what it computes)."""
    n = crops.corners.shape[0]
    uniform = torch.full((n,), 1.0 / n, device=mask.device)
    if how == "uniform":
        return uniform
    if how != "coverage":
        raise ValueError(f"patch_weighting must be 'coverage' or 'uniform', got {how!r}")
    ratio = cut(mask, crops).flatten(1).mean(1)
    total = ratio.sum()
    return ratio / total if float(total) > 1e-8 else uniform


def tv_prior(x: torch.Tensor) -> torch.Tensor:
    """Σ of the L2 norms of the four neighbour-difference images (official ``get_image_prior_losses``)."""
    d1 = x[..., :, :-1] - x[..., :, 1:]
    d2 = x[..., :-1, :] - x[..., 1:, :]
    d3 = x[..., 1:, :-1] - x[..., :-1, 1:]
    d4 = x[..., :-1, :-1] - x[..., 1:, 1:]
    return d1.norm() + d2.norm() + d3.norm() + d4.norm()


def content_loss(vgg: Any, target: torch.Tensor, content_feats: dict[str, torch.Tensor],
                 layers: Sequence[str] = CONTENT_LAYERS) -> torch.Tensor:
    """Σ over ``layers`` of mean((φ(target) − φ(normal))²); ``vgg`` normalises its input (ImageNet)."""
    feats = vgg(target, layers)
    return sum(((feats[n] - content_feats[n]) ** 2).mean() for n in layers)


def masked_clip(judge: ClipJudge, target: torch.Tensor, mask: torch.Tensor, text_anomaly: torch.Tensor) -> torch.Tensor:
    """1 − cos(CLIP(target ⊙ M), T_a)."""
    emb = judge.image(target * mask)
    return 1 - (emb * text_anomaly).sum(-1).mean()
