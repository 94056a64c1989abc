"""AnoStyler (So & Kang, AAAI 2026, arXiv 2511.06687): zero-shot anomalies as text-driven local style transfer.

Input: one normal image, its category name and a defect name. Output: the image with a
defect painted into a generated mask, and that mask. Nothing is trained beforehand: for
every image a fresh 0.6 M-parameter U-Net is optimised for 76 Adam steps so that, inside
the mask, the image moves along the CLIP direction "normal → anomalous" while VGG content
and a TV prior keep it a plausible version of the same object. The paper's steps, as the
section headers below number them:

1. **Meta-shape prior** (:mod:`.shapes`): 1–5 lines / dots / freeform blobs on a 256²
   canvas, p(m) ∝ exp(−0.7·m).
2. **Foreground restriction** (:mod:`.foreground`): intersect with the object (SAM with
   four background corners in the paper; here the batch's ``object_mask`` or a classical
   corner-seeded stand-in), redraw until non-empty; textures use the whole image.
3. **Two-class prompts** (:mod:`.prompts`): 25 templates × normal / anomaly states →
   mean-pooled CLIP text embeddings T_n, T_a (paper version with the defect name by
   default; ``prompt_set="code"`` reproduces the released code, which never uses it).
4. **Style U-Net** (:mod:`.stylenet`): fresh per image, composite
   ``target = I·(1 − M) + U(I)·M``.
5. **Losses** (:mod:`.losses`): patch directional CLIP (64 perspective-warped crops,
   0.7 rejection, mask-coverage weights) ×9000, global directional ×500, masked CLIP
   ×1000, VGG content ×150, TV ×0.002.
6. **Optimisation**: Adam lr 5e-4 (StepLR(100, 0.5), which never fires) for 76 steps on
   :class:`anoplug.train.Trainer`; the output is the composite of the last step's forward
   pass (official code: the 76th update is taken but never rendered).

The generator is zero-shot (``requires.fit`` is False): there is nothing to ``fit`` and
no weights to ship beyond the frozen CLIP and VGG16 the losses use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from anoplug.generator import Generator, Paper, Requires, Samples
from anoplug.params import Params
from anoplug.types import Batch
from anoplug_anostyler import foreground as FG
from anoplug_anostyler import losses as L
from anoplug_anostyler.prompts import anomaly_phrases, normal_phrases
from anoplug_anostyler.shapes import CANVAS
from anoplug_anostyler.stylenet import StyleUNet, init_weights

__all__ = ["AnostylerParams", "Anostyler", "PRESETS"]

#: working sizes per preset (0 in a field = take it from the preset). ``paper``: the official
#: 512² working resolution with 128² crops; ``cpu``: 256² (the resolution the official code
#: saves) with crops scaled alike (64², the same quarter of the side).
PRESETS: dict[str, dict[str, int]] = {"paper": {"image_size": 512, "crop_size": 128},
                                      "cpu": {"image_size": 256, "crop_size": 64}}


class AnostylerParams(Params):
    preset: Literal["paper", "cpu"] = Field("paper", description="working sizes: 'paper' (512² image, 128² crops) "
                                                                  "or 'cpu' (256², 64² crops); same algorithm")
    image_size: int = Field(0, ge=0, le=2048, multiple_of=8,
                            description="working side in px, multiple of 8 (0 = from the preset)")
    crop_size: int = Field(0, ge=0, le=2048, description="side of the patch-loss crops in px (0 = from the preset)")
    num_crops: int = Field(64, ge=1, le=512, description="crops per step of the patch directional loss")
    steps: int = Field(76, ge=1, le=10_000, description="Adam steps per image (official max_step + 1 = 76)")
    lr: float = Field(5e-4, gt=0.0, le=1.0, description="Adam learning rate")
    lr_step: int = Field(100, ge=1, le=100_000, description="StepLR period (never reached at 76 steps)")
    lr_gamma: float = Field(0.5, gt=0.0, le=1.0, description="StepLR decay factor")
    thresh: float = Field(0.7, ge=0.0, le=2.0, description="patch losses below this are zeroed (CLIPstyler rejection)")
    lambda_pdir: float = Field(9000.0, ge=0.0, description="weight of the patch directional CLIP loss")
    lambda_gdir: float = Field(500.0, ge=0.0, description="weight of the global directional CLIP loss")
    lambda_mclip: float = Field(1000.0, ge=0.0, description="weight of the masked CLIP loss")
    lambda_c: float = Field(150.0, ge=0.0, description="weight of the VGG content loss")
    lambda_tv: float = Field(0.002, ge=0.0, description="weight of the total-variation prior")
    distortion: float = Field(0.5, ge=0.0, le=1.0, description="RandomPerspective distortion of each crop")
    patch_weighting: Literal["coverage", "uniform"] = Field(
        "coverage", description="crop weights: mask coverage (the code's intent) or uniform (what the released code computes)")
    prompt_set: Literal["paper", "code"] = Field(
        "paper", description="anomaly sentences with the defect name (paper) or without it (released code)")
    category: str = Field("", max_length=80, description="category name in the prompts ('' = meta['category'], "
                                                         "else 'object')")
    m_max: int = Field(5, ge=1, le=20, description="most shapes per meta-shape prior")
    alpha: float = Field(0.7, ge=0.0, le=10.0, description="p(m) ∝ exp(-alpha·m) over the number of shapes")
    fg_mask: bool = Field(True, description="keep the prior on the object (foreground restriction)")
    fg_source: Literal["auto", "object_mask", "corners"] = Field(
        "auto", description="foreground: batch object_mask if present else corner stand-in (auto), or one of them")
    max_tries: int = Field(100, ge=1, le=10_000, description="prior redraws before a dot is placed on the object")
    ngf: int = Field(16, ge=4, le=64, description="U-Net base width (16: 615,267 parameters)")
    clip_model: str = Field("tiny", min_length=1, description="'tiny' (committed offline CLIP) or a local "
                                                              "CLIPModel folder (paper: ViT-B/32)")
    vgg_weights: str = Field("", description="converted VGG16 safetensors ('' = the anoplug cache from make setup)")

    def sizes(self) -> dict[str, int]:
        """The preset's working sizes with every non-zero field overriding its entry."""
        return {k: getattr(self, k) or v for k, v in PRESETS[self.preset].items()}


@functools.lru_cache(maxsize=4)
def _clip_judge(path: str, device: str) -> L.ClipJudge:
    """One frozen CLIP per (folder, device) for the whole process: every image and instance shares it."""
    return L.ClipJudge.load(path, device=device)


@functools.lru_cache(maxsize=4)
def _vgg_features(weights: str, device: str) -> Any:
    """One frozen VGG16 trunk (to relu5_2) per (weights file, device)."""
    from anoplug.zoo.vgg import VGGFeatures

    return VGGFeatures(L.CONTENT_LAYERS[-1], weights=weights or None).to(device)


def _canvas_to(canvas: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The 256² prior at the output size: nearest when enlarging (official), max-pooling when shrinking.

    *Our assumption*: the official code only ever enlarges (256 → 512); shrinking by nearest
    would drop 1-px lines, so a smaller output marks every cell the prior touches.
    """
    if h >= CANVAS and w >= CANVAS:
        return F.interpolate(canvas, size=(h, w), mode="nearest")
    return F.adaptive_max_pool2d(canvas, (h, w))


def _label(defect: str) -> str:
    """A defect name as a label / folder name ("scratch", "rust_spot"); "anostyler" without one."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", defect.strip()).strip("_") or "anostyler"


class Anostyler(Generator):
    name = "anostyler"
    title = "AnoStyler: text-driven localized anomalies by lightweight CLIP style transfer"
    category = "multimodal-text-image"
    tags = ("mask",)
    paper = Paper("AnoStyler: Text-Driven Localized Anomaly Generation via Lightweight Style Transfer",
                  venue="AAAI", year=2026, url="https://arxiv.org/abs/2511.06687",
                  code_url="https://github.com/yulimso/AnoStyler")
    Params = AnostylerParams
    requires = Requires(fit=False, weights="clip", accepts=("prompt", "target_mask"))
    smoke_params = {"preset": "cpu", "image_size": 64, "crop_size": 32, "num_crops": 4, "steps": 2}
    preserves_outside_mask = True

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        sizes = self.params.sizes()
        if sizes["crop_size"] > sizes["image_size"]:
            from anoplug.params import ParamError

            raise ParamError(f"invalid parameter 'crop_size': {sizes['crop_size']} exceeds image_size "
                             f"{sizes['image_size']}")
        self._clip: L.ClipJudge | None = None
        self._vgg: Any = None
        self._texts: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        #: per image of the last ``generate``: the Trainer history (one row per Adam step)
        self.last_histories: list[list[dict]] = []

    # -- frozen judges (loaded once per process, never saved: they are not AnoStyler's weights) -----------
    @property
    def clip(self) -> L.ClipJudge:
        if self._clip is None:
            self._clip = _clip_judge(self.params.clip_model, str(self.device))
        return self._clip

    @property
    def vgg(self) -> Any:
        if self._vgg is None:
            self._vgg = _vgg_features(self.params.vgg_weights, str(self.device))
        return self._vgg

    def to(self, device: str | torch.device) -> Anostyler:
        super().to(device)
        self._clip, self._vgg, self._texts = None, None, {}
        return self

    # -- 1-2. meta-shape prior, restricted to the foreground ----------------------------------------------
    def _foreground(self, batch: Batch, i: int) -> tuple[np.ndarray | None, str]:
        """The sample's object on the canvas (None = whole image) and where it came from."""
        p = self.params
        if not p.fg_mask:
            return None, "off"
        has_obj = batch.object_mask is not None
        if p.fg_source == "object_mask" or (p.fg_source == "auto" and has_obj):
            if not has_obj:
                return None, "none"
            return FG.to_canvas(batch.object_mask[i, 0].cpu().numpy() > 0.5), "object_mask"
        return FG.to_canvas(FG.corner_foreground(batch.image[i])), "corners"

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the prompt it uses and (unless a target mask is given) its restricted prior."""
        given = batch.conditions.target_mask
        prompts = batch.conditions.prompt
        out = Samples()
        for i, rng in enumerate(rngs):
            rec: dict[str, Any] = {"category": self._category(batch, i),
                                   "defect": prompts[i].strip() if prompts is not None else ""}
            if given is None:
                fg, source = self._foreground(batch, i)
                prior = FG.restricted_prior(rng, fg, m_max=self.params.m_max, alpha=self.params.alpha,
                                            max_tries=self.params.max_tries)
                rec.update(prior=torch.from_numpy(prior.mask.astype(np.uint8)), shapes=list(prior.kinds),
                           tries=prior.tries, fallback=prior.fallback, foreground=source)
            out.append(rec)
        return out

    def _category(self, batch: Batch, i: int) -> str:
        return self.params.category or str(batch.meta[i].get("category") or "object")

    # -- 3. two-class prompts ---------------------------------------------------------------------------
    def text_embeddings(self, category: str, defect: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T_n, T_a), each ``[1, D]`` unit: mean-pooled CLIP embeddings of the two sentence sets."""
        key = (category, defect, self.params.prompt_set)
        if key not in self._texts:
            t_n = self.clip.text_set(normal_phrases(category))
            t_a = self.clip.text_set(anomaly_phrases(category, defect, self.params.prompt_set))
            self._texts[key] = (t_n, t_a)
        return self._texts[key]

    # -- 4-6. one image: fresh U-Net, five losses, 76 Adam steps on the Trainer ---------------------------
    def stylise(self, image: torch.Tensor, mask: torch.Tensor, t_n: torch.Tensor, t_a: torch.Tensor,
                rng: torch.Generator) -> tuple[torch.Tensor, list[dict]]:
        """``U(I)`` (``[1,3,s,s]``, from the last step's forward pass) and the per-step loss history.

        ``image`` ``[1,3,s,s]`` and ``mask`` ``[1,1,s,s]`` are at the working size; every draw
        (U-Net init, crops, perspective warps) comes from ``rng``.
        """
        from anoplug.train import Trainer

        p, judge, vgg = self.params, self.clip, self.vgg
        crop = p.sizes()["crop_size"]
        net = init_weights(StyleUNet(p.ngf), rng).to(self.device)
        opt = torch.optim.Adam(net.parameters(), lr=p.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=p.lr_step, gamma=p.lr_gamma)
        with torch.no_grad():
            src = judge.image(image)
            content = {k: v.detach() for k, v in vgg(image, L.CONTENT_LAYERS).items()}
        text_dir = t_a - t_n
        last: dict[str, torch.Tensor] = {}
        s = image.shape[-1]

        def step(ctx: Any) -> dict[str, Any]:
            styled = net(image)
            target = image * (1 - mask) + styled * mask
            crops = L.draw_crops(ctx.generator, p.num_crops, crop, s, s)
            patches = F.interpolate(L.cut(target, crops), size=judge.size, mode="bilinear", align_corners=False)
            patches = L.perspective_warp(patches, ctx.generator, p.distortion)
            per_crop = L.directional(judge.image(patches), src, text_dir)
            per_crop = torch.where(per_crop < p.thresh, torch.zeros_like(per_crop), per_crop)
            patch = (L.patch_weights(mask, crops, p.patch_weighting) * per_crop).sum()
            glob = L.directional(judge.image(target), src, text_dir).mean()
            masked = L.masked_clip(judge, target, mask, t_a)
            cont = L.content_loss(vgg, target, content)
            tv = L.tv_prior(target)
            loss = (p.lambda_pdir * patch + p.lambda_gdir * glob + p.lambda_mclip * masked + p.lambda_c * cont
                    + p.lambda_tv * tv)
            last["styled"] = styled.detach()
            return {"loss": loss, "patch": patch.detach(), "global": glob.detach(), "masked": masked.detach(),
                    "content": cont.detach(), "tv": tv.detach()}

        history = Trainer({"style_net": net}, {"adam": opt}, step, steps=p.steps, generator=rng,
                          schedulers={"adam": sched}, device=self.device, desc="anostyler").fit()
        return last["styled"], history

    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        drawn = self.sample(batch, rngs)  # always: on replay it moves each rng past the prior draws
        samples = drawn if samples is None else Samples(samples)
        h, w = batch.size
        size = self.params.sizes()["image_size"]
        given = batch.conditions.target_mask
        out = batch.clone()
        masks, labels, self.last_histories = [], [], []
        for i, (rec, rng) in enumerate(zip(samples, rngs)):
            if given is not None:
                m_out = given[i:i + 1].to(self.device)
            else:
                m_out = _canvas_to(rec["prior"].float().view(1, 1, CANVAS, CANVAS).to(self.device), h, w)
            masks.append(m_out)
            if not bool(m_out.any()):  # an empty mask: the normal image is returned (official behaviour)
                labels.append("good")
                self.last_histories.append([])
                continue
            image = batch.image[i:i + 1].to(self.device)
            work = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True) \
                if (h, w) != (size, size) else image
            m_work = F.interpolate(m_out, size=(size, size), mode="nearest")
            t_n, t_a = self.text_embeddings(rec["category"], rec["defect"])
            styled, hist = self.stylise(work, m_work, t_n, t_a, rng)
            if (h, w) != (size, size):
                styled = F.interpolate(styled, size=(h, w), mode="bilinear", align_corners=False)
            out.image[i:i + 1] = torch.where(m_out > 0, styled.clamp(0, 1), image)
            labels.append(_label(rec["defect"]))
            self.last_histories.append(hist)
        out.mask = torch.cat(masks).float()
        out.label = labels
        for i, hist in enumerate(self.last_histories):
            if hist:
                out.meta[i]["optimisation"] = {"steps": len(hist), "loss_first": float(hist[0]["loss"]),
                                               "loss_last": float(hist[-1]["loss"])}
        return out, samples
