"""DT-GAN (Wang, Hoppe, Monari, Huber — BMVC 2022): defect types learned across products, transferred by style.

"Defect Transfer GAN: Diverse Defect Synthesis for Data Augmentation", arXiv 2302.08366. No official
code is public. The method is built on StarGAN v2 (Choi et al., CVPR 2020; official code
clovaai/stargan-v2, read for the base design, not copied). Read top to bottom:

1. **Style codes per defect type.** Domains are ``good`` plus every fitted defect type (shared by
   *name* across products: a hole on fabric and a hole on tile are one domain). A mapping network
   turns a latent z ~ N(0, I) and a domain into a style code; a style encoder turns a reference
   image and its domain into one (StarGAN v2's F and E, one output branch per domain).
2. **Two-path generator.** A shared encoder reads the normal image; a style-free *background* path
   decodes the product without defect; an AdaIN *defect foreground* path (the style code) decodes a
   colour change Δ and an alpha α = σ(logit). ``out = m·(background + Δ) + (1 − m)·x`` with the mask
   m = 1[α > 0.5] (straight-through gradient): outside m the output is the input, bit for bit.
3. **Multi-task discriminator** with one real/fake head per defect type; non-saturating loss, R1 on
   real defects (λ_reg = 1, StarGAN v2), the generator networks used through their EMA (0.999).
4. **Losses** (each a ``g/<name>`` entry of the history): adversarial; style reconstruction
   ‖E(G(x, s), y) − s‖₁; style diversification −λ_ds‖G(x, s₁) − G(x, s₂)‖₁ with λ_ds decayed linearly to 0
   (StarGAN v2); cycle ‖G(G(x, s), E(x, good)) − x‖₁; background preservation ‖b(x) − x‖₁ + ‖b(G(x, s)) − x‖₁
   (the background path reproduces the defect-free product, also through a generated defect); mask
   regularisation λ_mask·|mean(α) − area of the real defect's mask| + λ_bin·mean(min(α, 1 − α)) (as large
   as a real defect of the type, and either 0 or 1). Each training
   step is one D and one G update on either the latent path (even steps) or the reference path (odd
   steps); StarGAN v2 runs both in every iteration.
5. **Generation.** Per sample: the defect type (``conditions.defect_type`` or drawn), z (drawn) or the
   style of ``conditions.references`` (mean code of the references whose ``reference_masks`` are not
   empty); the translation runs at the training resolution and is composed back onto the full-size
   input through the upsampled alpha (thresholded at 0.5 at full size). Mask = (α > 0.5) ∧ (a channel
   moved by more than ``change_tol``).

What is the paper's, StarGAN v2's, or ours is listed in the plugin README.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator

from anoplug.conditions import ConditionError
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.train import GANBatch, GANStep, StepContext
from anoplug.train.gan import nonsaturating_d_loss, nonsaturating_g_loss, r1_penalty
from anoplug.types import GOOD, Batch
from anoplug_dt_gan.networks import (
    DefectGenerator,
    GeneratorOutput,
    MappingNetwork,
    MultiTaskDiscriminator,
    StyleEncoder,
    he_init,
)

__all__ = ["DTGAN", "DTGANParams", "DTGANStep", "PRESETS", "resize"]

#: published sizes (StarGAN v2's AFHQ configuration at 256², which DT-GAN builds on) and the smallest CPU version
PRESETS: dict[str, dict[str, int]] = {
    "paper": {"resolution": 256, "width": 64, "max_width": 512, "n_down": 4, "n_bottleneck": 2, "style_dim": 64,
              "mapping_hidden": 512, "fit_steps": 100_000},
    "cpu": {"resolution": 64, "width": 8, "max_width": 48, "n_down": 3, "n_bottleneck": 2, "style_dim": 16,
            "mapping_hidden": 64, "fit_steps": 2000},
}


class DTGANParams(Params):
    preset: Literal["paper", "cpu"] = Field("cpu", description="sizes: 'paper' (StarGAN v2 at 256², style 64) or "
                                            "'cpu' (64², 3 down/up blocks, style 16); fields set to 0 / -1 follow it")
    resolution: int = Field(0, ge=0, le=1024, description="working size in px, a power of 2 >= 16 (0 = preset: 256 / 64)")
    width: int = Field(0, ge=0, le=512, description="channels after the first conv (0 = preset: 64 / 8)")
    max_width: int = Field(0, ge=0, le=1024, description="channel cap of every network (0 = preset: 512 / 48)")
    n_down: int = Field(0, ge=0, le=8, description="generator down/up blocks (0 = preset: 4 / 3)")
    n_bottleneck: int = Field(-1, ge=-1, le=8, description="generator bottleneck blocks per path (-1 = preset: 2)")
    style_dim: int = Field(0, ge=0, le=512, description="style code size (0 = preset: 64 / 16)")
    latent_dim: int = Field(16, ge=1, le=512, description="size of z, the mapping network's input (StarGAN v2: 16)")
    mapping_hidden: int = Field(0, ge=0, le=2048, description="mapping network width (0 = preset: 512 / 64)")
    alpha_bias: float = Field(-2.0, ge=-10.0, le=10.0, description="initial bias of the alpha logit (-2: alpha "
                              "~0.12 < 0.5, so training starts at the identity)")
    lambda_reg: float = Field(1.0, ge=0.0, le=100.0, description="R1 weight on real defects (StarGAN v2: 1)")
    lambda_sty: float = Field(1.0, ge=0.0, le=100.0, description="style reconstruction weight (StarGAN v2: 1)")
    lambda_ds: float = Field(1.0, ge=0.0, le=100.0, description="style diversification weight at step 0 (StarGAN v2: 1)")
    ds_steps: int = Field(0, ge=0, le=10_000_000, description="steps over which lambda_ds decays linearly to 0 "
                          "(0 = the whole fit, as StarGAN v2's ds_iter = total_iters)")
    lambda_cyc: float = Field(1.0, ge=0.0, le=100.0, description="cycle-consistency weight (StarGAN v2: 1)")
    lambda_bg: float = Field(1.0, ge=0.0, le=100.0, description="background-preservation weight (our assumption)")
    lambda_mask: float = Field(5.0, ge=0.0, le=100.0, description="mask regularisation: weight of |area of the mask "
                               "- area of the paired real defect's mask| (our assumption)")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="Adam lr of generator, style encoder and D (StarGAN v2)")
    f_lr: float = Field(1e-6, gt=0.0, le=1.0, description="Adam lr of the mapping network (StarGAN v2: 1e-6)")
    beta1: float = Field(0.0, ge=0.0, lt=1.0, description="Adam beta1 (StarGAN v2: 0)")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="Adam beta2 (StarGAN v2: 0.99)")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="Adam weight decay (StarGAN v2: 1e-4)")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="EMA of the generator networks, used after fit "
                             "(StarGAN v2: 0.999; 0 = none)")
    batch_size: int = Field(8, ge=1, le=256, description="images per step (StarGAN v2: 8)")
    fit_steps: int = Field(0, ge=0, le=10_000_000, description="training steps (0 = preset: 100000 / 2000)")
    change_tol: float = Field(2 / 255, ge=0.0, le=1.0, description="a pixel is in the mask when alpha > 0.5 and a "
                              "channel moved by more than this (the mask-precision metric's threshold)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of fit: initial weights, batches, z (fit(seed=) overrides)")

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v and (v < 16 or v & (v - 1)):
            raise ValueError("must be 0 (preset) or a power of 2 >= 16")
        return v

    def resolved(self, name: str) -> int:
        """The value of size field ``name``: its own if set, else the preset's."""
        own = getattr(self, name)
        unset = -1 if name == "n_bottleneck" else 0
        return int(PRESETS[self.preset][name] if own == unset else own)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to ``size``² (antialiased when shrinking), used for training data and inputs alike."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


@contextlib.contextmanager
def _no_param_grads(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` get no gradient (so the optimiser leaves them alone); inputs still do."""
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


# -- 3. and 4. the training step ---------------------------------------------------------------------------
class DTGANStep(GANStep):
    """One D update and one G update (manual optimisation on :class:`anoplug.train.GANStep`).

    ``G`` is a ``ModuleDict`` (generator, mapping, style) with one optimiser, ``D`` the multi-task
    critic. Even steps take style codes from the mapping network (z), odd steps from the style
    encoder on a second real defect of the same type (the reference path); on reference steps the
    mapping network and the style encoder are not updated, as in StarGAN v2's reference G step.
    """

    def __init__(self, model: DTGAN, data: dict[str, Any], total_steps: int) -> None:
        p = model.params
        super().__init__(model.G, model.D, self.draw_batch, loss="nonsaturating", r1_gamma=p.lambda_reg)
        self.model, self.data, self.p = model, data, p
        self.ds_steps = p.ds_steps or max(total_steps, 1)

    # -- the batch: real defects of a type, normals of the same product, two latents ------------------
    def draw_batch(self, ctx: StepContext) -> GANBatch:
        d, g, n = self.data, ctx.generator, self.p.batch_size
        j = torch.randint(len(d["defects"]), (n,), generator=g)
        y = d["defect_domain"][j]
        ref2 = [d["by_domain"][int(t)][int(torch.randint(len(d["by_domain"][int(t)]), (1,), generator=g))] for t in y]
        src = []
        for k in j.tolist():
            pool = d["normals_of"][int(d["defect_product"][k])]
            src.append(pool[int(torch.randint(len(pool), (1,), generator=g))])
        z1 = torch.randn(n, self.p.latent_dim, generator=g)
        z2 = torch.randn(n, self.p.latent_dim, generator=g)
        mode = "latent" if ctx.step % 2 == 0 else "reference"
        return GANBatch(real=d["defects"][j], g_input=None, d_cond=(y - 1,),
                        extra={"x_src": d["normals"][torch.tensor(src)], "y": y, "z1": z1, "z2": z2,
                               "x_ref2": d["defects"][torch.tensor(ref2)], "area": d["defect_area"][j], "mode": mode,
                               "step": ctx.step})

    def style(self, batch: GANBatch, which: int) -> torch.Tensor:
        """Target style codes: mapping(z) on latent steps, style encoder(reference) on reference steps (no grad)."""
        e = batch.extra
        if e["mode"] == "latent":
            return self.G["mapping"](e["z1"] if which == 1 else e["z2"], e["y"])
        with torch.no_grad():
            return self.G["style"](batch.real if which == 1 else e["x_ref2"], e["y"])

    def generate(self, batch: GANBatch) -> dict[str, Any]:
        s = self.style(batch, 1)
        out = self.G["generator"](batch.extra["x_src"], s)
        return {"out": out, "image": out.image, "s": s}

    def discriminate(self, x: torch.Tensor, batch: GANBatch) -> torch.Tensor:
        return self.D(x, *batch.d_cond)

    def d_terms(self, ctx: StepContext, batch: GANBatch, fake: Any, d_index: int) -> dict[str, torch.Tensor]:
        """Non-saturating D loss of the target type's head; R1 (½·λ_reg·‖∇D(real)‖²) on the real defects."""
        real = batch.real.detach().requires_grad_(self.p.lambda_reg > 0)
        real_out = self.discriminate(real, batch)
        fake_out = self.discriminate(fake["image"].detach(), batch)
        terms = {"adv": nonsaturating_d_loss(real_out, fake_out)}
        if self.p.lambda_reg > 0:
            terms["r1"] = 0.5 * self.p.lambda_reg * r1_penalty(real_out, real)
        return terms

    def lambda_ds(self, step: int) -> float:
        """StarGAN v2's linear decay: λ_ds·(1 − step/ds_steps), never below 0."""
        return self.p.lambda_ds * max(0.0, 1.0 - step / self.ds_steps)

    def g_terms(self, ctx: StepContext, batch: GANBatch, fake: Any) -> dict[str, torch.Tensor]:
        p, e, G = self.p, batch.extra, self.G
        out: GeneratorOutput = fake["out"]
        x, y = e["x_src"], e["y"]
        frozen = (G["mapping"], G["style"]) if e["mode"] == "reference" else ()
        with _no_param_grads(*frozen):
            terms = {"adv": nonsaturating_g_loss(self.discriminate(out.image, batch))}
            terms["sty"] = p.lambda_sty * (G["style"](out.image, y) - fake["s"]).abs().mean()
            with torch.no_grad():
                other = G["generator"](x, self.style(batch, 2)).image
            terms["ds"] = -self.lambda_ds(e["step"]) * (out.image - other).abs().mean()
            good = torch.zeros_like(y)
            rec = G["generator"](out.image, G["style"](x, good))
            terms["cyc"] = p.lambda_cyc * (rec.image - x).abs().mean()
            terms["bg"] = p.lambda_bg * ((out.background - x).abs().mean() + (rec.background - x).abs().mean())
            terms["mask"] = p.lambda_mask * (out.mask.flatten(1).mean(1) - e["area"]).abs().mean()
        return terms


# -- the generator class -------------------------------------------------------------------------------------
class DTGAN(LearnedGenerator):
    """``fit(normals, defects)`` on several products at once, then ``generate(normals)`` with a defect type.

    The steps (sections below and in :mod:`anoplug_dt_gan.networks`): 1. style codes per defect type
    (mapping network, style encoder); 2. the two-path generator composed through its alpha mask;
    3. the multi-task discriminator (non-saturating + R1, G through its EMA); 4. the losses (adversarial,
    style reconstruction, decaying diversification, cycle, background preservation, mask area);
    5. generation at any input size.

    Conditions (all optional): ``defect_type`` (one fitted type per sample; drawn when absent),
    ``references`` (real defect images whose style is transferred through the style encoder; without
    them the style comes from the mapping network and a per-sample z) and ``reference_masks``
    (references whose mask is empty are left out of the mean style).
    """

    name = "dt-gan"
    title = "Defect Transfer GAN (DT-GAN): defect styles transferred across products"
    category = "gan"
    tags = ()
    paper = Paper("Defect Transfer GAN: Diverse Defect Synthesis for Data Augmentation", "BMVC", 2022,
                  "https://arxiv.org/abs/2302.08366", "")
    Params = DTGANParams
    requires = Requires(fit=True, anomalies=True, accepts=("defect_type", "references", "reference_masks"))
    manual_optimization: ClassVar[bool] = True
    pretrained: ClassVar[dict[str, str]] = {"textures": "weights/textures"}

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.types: list[str] = []  # fitted defect types; domain k+1 is types[k], domain 0 is "good"
        self.products: list[str] = []  # products seen in fit (provenance only)
        self.G: nn.ModuleDict | None = None
        self.D: MultiTaskDiscriminator | None = None
        self.history: list[dict] = []
        self.ema = {"G": self.params.ema_decay} if self.params.ema_decay > 0 else {}

    # -- the networks -------------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.params.resolved("resolution")

    def _build_networks(self, types: Sequence[str], generator: torch.Generator) -> None:
        p, r = self.params, self.params.resolved
        self.types = list(types)
        domains = len(self.types) + 1
        size, width, max_width = r("resolution"), r("width"), r("max_width")
        self.G = nn.ModuleDict({
            "generator": DefectGenerator(r("style_dim"), width, max_width, r("n_down"), r("n_bottleneck"),
                                         p.alpha_bias),
            "mapping": MappingNetwork(p.latent_dim, r("style_dim"), domains, r("mapping_hidden")),
            "style": StyleEncoder(size, r("style_dim"), domains, width, max_width)})
        self.D = MultiTaskDiscriminator(size, len(self.types), width, max_width)
        he_init(self.G, generator)
        he_init(self.D, generator)
        self.G["generator"].reset_alpha_bias()
        self.train_mode(False)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D} if self.G is not None else {}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "types": list(self.types), "products": list(self.products)}

    def restore_config(self, config: dict[str, Any]) -> None:
        types = config.get("types")
        if not types or not all(isinstance(t, str) for t in types):
            raise ValueError(f"{self.name}: the saved config lists no defect types")
        self.products = list(config.get("products", []))
        self._build_networks(types, torch.Generator().manual_seed(0))  # weights are loaded over these

    # -- fit --------------------------------------------------------------------------------------------------
    def default_steps(self) -> int:
        return self.params.resolved("fit_steps")

    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """Domains from the defect labels, products from ``meta["category"]``; data resized once to the work size."""
        if normals is None or len(normals) == 0:
            raise ValueError(f"{self.name}.fit needs normal images (the products to put defects on)")
        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs anomalies: real defect images with defect-type labels")
        bad = [i for i in range(len(anomalies)) if anomalies.label[i] == GOOD]
        if bad:
            raise ValueError(f"{self.name}.fit: anomalies[{bad[0]}] is labelled {GOOD!r}; every anomaly needs its "
                             "defect type as label")
        types = sorted(set(anomalies.label))
        self._build_networks(types, generator)

        def product(b: Batch, i: int) -> str:
            return str(b.meta[i].get("category", "")) if i < len(b.meta) else ""

        self.products = sorted({product(normals, i) for i in range(len(normals))}
                               | {product(anomalies, i) for i in range(len(anomalies))})
        norm_prod = torch.tensor([self.products.index(product(normals, i)) for i in range(len(normals))])
        def_prod = torch.tensor([self.products.index(product(anomalies, i)) for i in range(len(anomalies))])
        every = list(range(len(normals)))
        normals_of = [[i for i in every if int(norm_prod[i]) == k] or every for k in range(len(self.products))]
        domain = torch.tensor([types.index(t) + 1 for t in anomalies.label])
        size = self.resolution
        return {"normals": resize(normals.image, size) * 2 - 1, "defects": resize(anomalies.image, size) * 2 - 1,
                "defect_domain": domain, "defect_area": anomalies.mask.flatten(1).mean(1), "defect_product": def_prod,
                "normals_of": normals_of,
                "by_domain": {int(t): [i for i in range(len(domain)) if int(domain[i]) == int(t)]
                              for t in domain.unique()}}

    def planned_steps(self, steps: int | None, data: Any) -> int:
        total = self.default_steps() if steps is None else int(steps)
        data["gan"] = DTGANStep(self, data, total)
        return total

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam as StarGAN v2: lr 1e-4 (mapping network 1e-6), β = (0, 0.99), weight decay 1e-4."""
        p, G = self.params, self.G
        adam = {"betas": (p.beta1, p.beta2), "weight_decay": p.weight_decay}
        g_params = [*G["generator"].parameters(), *G["style"].parameters()]
        return {"G": torch.optim.Adam([{"params": g_params, "lr": p.lr},
                                       {"params": list(G["mapping"].parameters()), "lr": p.f_lr}], **adam),
                "D": torch.optim.Adam(self.D.parameters(), lr=p.lr, **adam)}

    def training_step(self, data: dict[str, Any], step: int, generator: torch.Generator) -> dict[str, float]:
        return data["gan"](StepContext(step, 0, generator, self.trainer))

    # -- 5. generation ---------------------------------------------------------------------------------------
    def _types_asked(self, batch: Batch) -> list[str] | None:
        asked = batch.conditions.defect_type
        if asked is None:
            return None
        unknown = [t for t in asked if t not in self.types]
        if unknown:
            raise ConditionError(f"conditions.defect_type {unknown[0]!r} was not fitted; fitted types: "
                                 f"{', '.join(self.types)}")
        return list(asked)

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the defect type (asked, or drawn uniformly among the fitted ones), then z ~ N(0, I)."""
        if not self.types:
            raise NotFittedError(f"{self.name} has no fitted defect types")
        asked = self._types_asked(batch)
        out = Samples()
        for i, g in enumerate(rngs):
            drawn = self.types[int(torch.randint(len(self.types), (1,), generator=g))]
            z = torch.randn(self.params.latent_dim, generator=g)
            out.append({"defect_type": asked[i] if asked is not None else drawn, "z": z})
        return out

    def _replayed(self, samples: Samples, batch: Batch) -> Samples:
        asked = self._types_asked(batch)
        out = Samples()
        for i, s in enumerate(samples):
            t = s.get("defect_type") if isinstance(s, dict) else None
            if t not in self.types:
                raise ValueError(f"samples[{i}]['defect_type'] {t!r} was not fitted; fitted types: {self.types}")
            z = torch.as_tensor(s.get("z"), dtype=torch.float32)
            if tuple(z.shape) != (self.params.latent_dim,):
                raise ValueError(f"samples[{i}]['z'] must hold {self.params.latent_dim} numbers, got {list(z.shape)}")
            out.append({"defect_type": asked[i] if asked is not None else t, "z": z})
        return out

    def style_code(self, domain: int, *, z: torch.Tensor | None = None, references: torch.Tensor | None = None,
                   reference_masks: torch.Tensor | None = None) -> torch.Tensor:
        """One style code ``[1, style_dim]``: mapping(z) or the mean style-encoder code of the references.

        References ``[K,3,H,W]`` in [0, 1] (any size); with ``reference_masks`` ``[K,1,H,W]`` those whose
        mask is empty are left out (all kept when every mask is empty).
        """
        y = torch.tensor([domain], device=self.device)
        if references is None:
            return self.G["mapping"](z.to(self.device)[None], y)
        refs = resize(references.to(self.device), self.resolution) * 2 - 1
        codes = torch.cat([self.G["style"](r[None], y) for r in refs])  # one at a time: bytes independent of K
        if reference_masks is not None:
            keep = reference_masks.flatten(1).amax(1) >= 0.5
            if bool(keep.any()):
                codes = codes[keep.to(codes.device)]
        return codes.mean(0, keepdim=True)

    def translate(self, image: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image ``[1,3,H,W]`` in [0, 1] → (output, binary alpha mask ``[1,1,H,W]``) at the input's size.

        The network runs at the working resolution; its alpha and foreground are upsampled (bilinear),
        alpha is thresholded at 0.5 there, and the foreground is composed onto the full-size input, so
        outside the alpha mask the output is the input.
        """
        h, w = image.shape[-2:]
        out = self.G["generator"](resize(image, self.resolution) * 2 - 1, style)
        alpha, fg = out.alpha, (out.foreground + 1) / 2
        if (h, w) != (self.resolution, self.resolution):
            alpha = F.interpolate(alpha, size=(h, w), mode="bilinear", align_corners=False)
            fg = F.interpolate(fg, size=(h, w), mode="bilinear", align_corners=False)
        m = (alpha > 0.5).to(image.dtype)
        return (m * fg + (1 - m) * image).clamp(0, 1), m

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Draw (or replay) type and z, then translate each sample on its own (its bytes never depend on its batch)."""
        drawn = self.sample(batch, rngs)
        samples = drawn if samples is None else self._replayed(samples, batch)
        c = batch.conditions
        images, masks, labels = [], [], []
        for i, rec in enumerate(samples):
            domain = self.types.index(rec["defect_type"]) + 1
            refs = None if c.references is None else c.references[i]
            rmasks = None if c.reference_masks is None else c.reference_masks[i]
            s = self.style_code(domain, z=rec["z"], references=refs, reference_masks=rmasks)
            x = batch.image[i:i + 1]
            out, alpha = self.translate(x, s)
            mask = (alpha.bool() & ((out - x).abs().amax(1, keepdim=True) > self.params.change_tol)).float()
            images.append(out)
            masks.append(mask)
            labels.append(rec["defect_type"] if bool(mask.any()) else GOOD)
        result = Batch(image=torch.cat(images).float().contiguous(), mask=torch.cat(masks), label=labels,
                       meta=[dict(m) for m in batch.meta], object_mask=batch.object_mask, depth=batch.depth,
                       text=batch.text)
        return result, samples
