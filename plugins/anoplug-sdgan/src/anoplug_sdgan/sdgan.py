"""SDGAN: defect image samples from defect-free ones by unpaired translation with a D2 adversarial loss.

S. Niu, B. Li, X. Wang, H. Lin, "Defect Image Sample Generation With GAN for Improving Defect
Recognition", IEEE T-ASE 17(3), 2020 (ieeexplore 9000806). No official code. The paper's text
could not be read here; what is from it (the abstract-level mechanism) and what is CycleGAN's
or D2GAN's is marked in the README's table.

Read top to bottom, as the method runs:

1. **Unpaired data.** Two domains: defect-free images N (plentiful, from the line) and defective
   images D (few). No pairing and **no defect masks**: the masks of ``anomalies`` are never read.
2. **Two translators** (CycleGAN's ResNet generator): G_nd : N → D adds defects, G_dn : D → N
   removes them. Both in one ``ModuleDict`` ``G`` with one optimiser.
3. **D2 adversarial loss.** Per domain two PatchGAN critics in the D2GAN manner (Nguyen et al.
   2017): D1 rewards real images (α·log D1(x) − D1(G)), D2 rewards translated ones
   (−D2(x) + β·log D2(G)); G fools both (−D1(G) + β·log D2(G)). Fakes reach the critics
   through CycleGAN's 50-image history pool, one per domain. All four critics in ``D``.
4. **Cycle consistency**, λ = 10 per direction: ‖G_dn(G_nd(n)) − n‖₁ and ‖G_nd(G_dn(d)) − d‖₁,
   which is what keeps a translated image the *same* surface, now with a defect.
5. **Training**: one D update then one G update per step (``anoplug.train.GANStep``), Adam
   2e-4, β = (0.5, 0.999), constant then linearly decayed to 0 (CycleGAN's schedule).
6. **Generation** (ours around the paper's G_nd): translate a normal image at the training
   resolution (in a randomly drawn dihedral orientation, undone afterwards: the only per-sample
   draw), derive the mask from G_nd(x) − x (low-passed with σ = ``mask_blur``, channel max of
   the absolute value > ``mask_threshold``, opened by ``mask_open``), and compose at the input's
   resolution: the input outside the mask, the upsampled translation inside (``compose=False``:
   the raw translation with the same mask).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.train import GANBatch, GANStep, ImagePool, StepContext
from anoplug.types import GOOD, Batch
from anoplug_sdgan.networks import PatchCritic, ResnetTranslator, d2_fake_loss, d2_generator_loss, d2_real_loss, init_weights

__all__ = ["SDGAN", "SDGANParams", "SDGANStep", "PRESETS", "derive_mask", "gaussian_blur", "dihedral", "undo_dihedral"]

#: The sizes each preset gives unless a field overrides them (0 = "from the preset").
PRESETS: dict[str, dict[str, int]] = {
    # CycleGAN's 256² set-up with the 6-block generator the spec names (paper sizes not found)
    "paper": {"resolution": 256, "width": 64, "blocks": 6, "d_width": 64, "d_layers": 3},
    # smallest faithful CPU version: 64², width 16, 3 blocks, 2-layer PatchGAN (checkpoint ≤ 3.5 MB)
    "cpu": {"resolution": 64, "width": 16, "blocks": 3, "d_width": 16, "d_layers": 2},
}
DOMAINS = ("defect", "normal")  # the critics' keys: "<domain>_1" rewards real, "<domain>_2" rewards fake


class SDGANParams(Params):
    preset: Literal["paper", "cpu"] = Field("cpu", description="sizes: 'paper' (256², width 64, 6 blocks, 3-layer "
                                            "PatchGAN) or 'cpu' (64², width 16, 3 blocks, 2-layer PatchGAN)")
    resolution: int = Field(0, ge=0, le=1024, description="training/translation side in px, multiple of 4 (0 = preset)")
    width: int = Field(0, ge=0, le=256, description="translator base width (0 = preset)")
    blocks: int = Field(0, ge=0, le=16, description="residual blocks per translator (0 = preset)")
    d_width: int = Field(0, ge=0, le=256, description="critic base width (0 = preset)")
    d_layers: int = Field(0, ge=0, le=5, description="stride-2 layers of each PatchGAN critic (0 = preset)")
    alpha: float = Field(0.2, gt=0, le=10, description="D2GAN α: weight of −log D1 on real images (D2GAN images: 0.2)")
    beta: float = Field(0.1, gt=0, le=10, description="D2GAN β: weight of log D2 on translated images (D2GAN images: 0.1)")
    cycle_weight: float = Field(10.0, ge=0, le=1000, description="λ of each L1 cycle-consistency term (CycleGAN: 10)")
    pool_size: int = Field(50, ge=0, le=1000, description="history of translated images shown to the critics (CycleGAN: 50)")
    lr: float = Field(2e-4, gt=0, le=1, description="Adam learning rate of translators and critics (CycleGAN: 2e-4)")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam β1 (CycleGAN: 0.5; β2 = 0.999)")
    decay_start: float = Field(0.5, ge=0, le=1, description="fraction of the steps after which lr decays linearly to 0 "
                               "(CycleGAN: 100 + 100 epochs = 0.5)")
    batch_size: int = Field(1, ge=1, le=64, description="images per domain per step (CycleGAN: 1)")
    flip: bool = Field(True, description="random horizontal flips of the training images (CycleGAN's default)")
    fit_steps: int = Field(2000, ge=1, le=10_000_000, description="training steps (one D and one G update each; "
                           "the shipped cpu checkpoint: 2000)")
    defect_type: str = Field("", description="fit on this defect type only and label outputs with it "
                             "('' = all given types, labelled 'defect')")
    mask_threshold: float = Field(0.1, gt=0, lt=1, description="a pixel is in the derived mask when the low-passed "
                                  "|G(x) − x| exceeds this in some channel (our assumption)")
    mask_blur: float = Field(1.0, ge=0, le=8, description="σ in px (at the working side) of the Gaussian low-pass "
                             "of G(x) − x before thresholding (0 = per pixel; our assumption)")
    mask_open: int = Field(1, ge=0, le=8, description="radius of the morphological opening that cleans the mask "
                           "(0 = none; our assumption)")
    orientation: Literal["random", "identity"] = Field("random", description="translate each image in a randomly drawn "
                                                       "flip/rotation (undone after), or as it is")
    compose: bool = Field(True, description="input outside the derived mask, translation inside (False: raw translation)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of fit's draws (weights, batches, flips, pool)")

    @model_validator(mode="after")
    def _sizes(self) -> SDGANParams:
        if self.resolution and self.resolution % 4:
            raise ValueError("resolution must be a multiple of 4 (two stride-2 down- and up-samplings)")
        return self

    def sizes(self) -> dict[str, int]:
        """The preset's sizes with every non-zero field overriding its entry."""
        return {k: getattr(self, k) or v for k, v in PRESETS[self.preset].items()}


# -- 6. generation helpers -------------------------------------------------------------------------
def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square: rotate by k·90° (k mod 4), then mirror if k ≥ 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`."""
    x = x.flip(-1) if k >= 4 else x
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian low-pass per channel (radius ⌈3σ⌉, reflected borders); σ = 0 returns ``x``."""
    if sigma <= 0:
        return x
    r = max(1, int(3 * sigma + 0.999))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t.square() / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def derive_mask(source: torch.Tensor, translated: torch.Tensor, threshold: float, open_radius: int = 0,
                blur: float = 0.0) -> torch.Tensor:
    """SDGAN returns no mask, so one is derived from the change G(x) − x (all of this is our assumption):

    1. optionally low-pass the *signed* change with a Gaussian of σ = ``blur`` px: the translator
       re-draws the fine weave everywhere with small ± errors, which cancel under the blur, while
       an added defect changes its pixels consistently and survives;
    2. a pixel is in the mask when the absolute change exceeds ``threshold`` in some channel (max);
    3. a morphological opening (erosion, dilation) with a (2r+1)² square drops specks thinner than 2r+1 px.

    Returns float {0,1} [B,1,H,W]. With ``blur=0`` a pixel changed by at most ``threshold`` in
    every channel is never in the mask.
    """
    m = (gaussian_blur(translated - source, blur).abs().amax(1, keepdim=True) > threshold).float()
    if open_radius > 0:
        k = 2 * open_radius + 1
        m = -F.max_pool2d(-m, k, stride=1, padding=open_radius)  # erosion
        m = F.max_pool2d(m, k, stride=1, padding=open_radius)  # dilation
    return m


# -- 3. + 4. the training step -----------------------------------------------------------------------
class SDGANStep(GANStep):
    """One SDGAN step on :class:`anoplug.train.GANStep`: G = {"nd", "dn"}, D = {"defect_1", "defect_2", "normal_1", "normal_2"}.

    ``batch.extra`` holds ``normal`` and ``defect`` images in [-1, 1] (unpaired). The D update
    sees each domain's real images and its pooled translations; the G update the current
    translations and their cycles. Terms are logged as ``d/<domain>_<1|2>``,
    ``g/adv_<domain>``, ``g/cycle_<domain>``.
    """

    def __init__(self, G: nn.ModuleDict, D: nn.ModuleDict, sample: Callable[[StepContext], GANBatch], *,
                 alpha: float, beta: float, cycle_weight: float, pool_size: int) -> None:
        super().__init__(G, D, sample, loss=(d2_real_loss, d2_generator_loss), n_critic=1)
        self.alpha, self.beta, self.cycle_weight = float(alpha), float(beta), float(cycle_weight)
        self.pools = {dom: ImagePool(pool_size) for dom in DOMAINS}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "loss": "d2gan", "alpha": self.alpha, "beta": self.beta,
                "cycle_weight": self.cycle_weight, "pool": self.pools["defect"].size}

    def generate(self, batch: GANBatch) -> dict[str, torch.Tensor]:
        """Translations of this batch: normal → defect by G_nd, defect → normal by G_dn."""
        return {"defect": self.G["nd"](batch.extra["normal"]), "normal": self.G["dn"](batch.extra["defect"])}

    def d_terms(self, ctx: StepContext, batch: GANBatch, fake: Any, d_index: int) -> dict[str, torch.Tensor]:
        """Per domain: D1 by :func:`d2_real_loss` (rewards real), D2 by :func:`d2_fake_loss` (rewards fake)."""
        terms = {}
        for dom in DOMAINS:
            real = batch.extra[dom]
            shown = self.pools[dom].query(fake[dom], ctx.generator)
            d1, d2 = self.D[f"{dom}_1"], self.D[f"{dom}_2"]
            terms[f"{dom}_1"] = d2_real_loss(d1(real), d1(shown), self.alpha)
            terms[f"{dom}_2"] = d2_fake_loss(d2(real), d2(shown), self.beta)
        return terms

    def g_terms(self, ctx: StepContext, batch: GANBatch, fake: Any) -> dict[str, torch.Tensor]:
        """Both adversarial terms (:func:`d2_generator_loss`) and both L1 cycles × λ."""
        terms = {f"adv_{dom}": d2_generator_loss(self.D[f"{dom}_1"](fake[dom]), self.D[f"{dom}_2"](fake[dom]), self.beta)
                 for dom in DOMAINS}
        if self.cycle_weight:
            back_normal = self.G["dn"](fake["defect"])  # n → d → n
            back_defect = self.G["nd"](fake["normal"])  # d → n → d
            terms["cycle_normal"] = self.cycle_weight * F.l1_loss(back_normal, batch.extra["normal"])
            terms["cycle_defect"] = self.cycle_weight * F.l1_loss(back_defect, batch.extra["defect"])
        return terms


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-2:] == (side, side):
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


class SDGAN(LearnedGenerator):
    """Unpaired: ``fit(normals, anomalies)`` on defect-free and defective images (labels used, masks not),
    then ``generate(normals)`` turns each defect-free image into a defective one with a derived mask.
    """

    name = "sdgan"
    title = "SDGAN: unpaired defect-free -> defective translation with D2 adversarial loss"
    category = "gan"
    paper = Paper("Defect Image Sample Generation With GAN for Improving Defect Recognition",
                  "IEEE Transactions on Automation Science and Engineering", 2020,
                  "https://ieeexplore.ieee.org/document/9000806")
    Params = SDGANParams
    requires = Requires(fit=True, anomalies=True)
    manual_optimization = True  # GANStep steps the two optimisers itself
    preserves_outside_mask: ClassVar[bool] = True  # with compose=True (the default)
    pretrained: ClassVar[dict[str, str]] = {"fabric": "weights/fabric"}

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.G: nn.ModuleDict | None = None
        self.D: nn.ModuleDict | None = None
        self.gan: SDGANStep | None = None
        self.label_name = "defect"
        self.history: list[dict] = []
        self._fitting = False

    # -- 2. the networks -------------------------------------------------------------------------
    def _make_modules(self) -> None:
        """Both translators and all four critics with the preset's sizes (weights: see :meth:`build`)."""
        s = self.params.sizes()
        with torch.random.fork_rng(devices=[]):  # PyTorch's default init draws globally; it is overwritten anyway
            torch.manual_seed(0)
            self.G = nn.ModuleDict({k: ResnetTranslator(s["width"], s["blocks"]) for k in ("nd", "dn")})
            self.D = nn.ModuleDict({f"{dom}_{i}": PatchCritic(s["d_width"], s["d_layers"]) for dom in DOMAINS
                                    for i in (1, 2)})
        self.G.to(self.device)
        self.D.to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D} if self.G is not None else {}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "label": self.label_name}

    def restore_config(self, config: dict[str, Any]) -> None:
        self.label_name = str(config.get("label", "defect"))
        self._make_modules()

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The two image pools, while fitting only (checkpoints resume exactly; a finished model ships without them)."""
        if not self._fitting or self.gan is None:
            return {}
        return {f"pool_{dom}.{k}": v for dom in DOMAINS for k, v in self.gan.pools[dom].state_dict().items()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        unknown = [k for k in tensors if not k.startswith("pool_")]
        if unknown:
            raise ValueError(f"{self.name}: unexpected extra tensors {sorted(unknown)}")
        if self.gan is None:  # a mid-fit checkpoint loaded for generation: the pools do not matter
            return
        for dom in DOMAINS:
            prefix = f"pool_{dom}."
            self.gan.pools[dom].load_state_dict({k[len(prefix):]: v.to(self.device) for k, v in tensors.items()
                                                 if k.startswith(prefix)})

    # -- 1. the unpaired data, 5. training (the host's fit template) ---------------------------------
    def fit(self, *args: Any, **kwargs: Any) -> SDGAN:
        self._fitting = True
        try:
            return super().fit(*args, **kwargs)
        finally:
            self._fitting = False

    def _defects(self, anomalies: Batch | None) -> Batch:
        """The defective images to fit on: label ≠ good (and = ``defect_type`` if set); masks are not read."""
        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs anomalies: defective images (unpaired; their masks are not used)")
        want = self.params.defect_type
        idx = [i for i, lab in enumerate(anomalies.label) if lab != GOOD and (not want or lab == want)]
        if not idx:
            known = sorted({lab for lab in anomalies.label if lab != GOOD})
            raise ValueError(f"{self.name}.fit: no defective images" + (f" of type {want!r}; given: {known}" if want else ""))
        return anomalies[idx]

    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Resize both domains to the working side, build and initialise the networks, set up the step."""
        if normals is None or len(normals) == 0:
            raise ValueError(f"{self.name}.fit needs normals: defect-free images")
        defects = self._defects(anomalies)
        types = list(dict.fromkeys(defects.label))
        self.label_name = types[0] if len(types) == 1 else "defect"
        p, side = self.params, self.params.sizes()["resolution"]
        self._make_modules()
        init_weights(self.G, generator)
        init_weights(self.D, generator)
        data = {"normal": _resize(normals.image, side).to(self.device) * 2 - 1,
                "defect": _resize(defects.image, side).to(self.device) * 2 - 1}

        def sample(ctx: StepContext) -> GANBatch:
            """An unpaired draw: ``batch_size`` images per domain, each flipped with probability ½."""
            g, n = ctx.generator, p.batch_size
            out = {}
            for dom in ("normal", "defect"):
                x = data[dom][torch.randint(len(data[dom]), (n,), generator=g).to(self.device)]
                if p.flip:
                    flip = (torch.rand(n, generator=g) < 0.5).to(self.device).view(-1, 1, 1, 1)
                    x = torch.where(flip, x.flip(-1), x)
                out[dom] = x
            return GANBatch(real=out["defect"], g_input=out["normal"], extra=out)

        self.gan = SDGANStep(self.G, self.D, sample, alpha=p.alpha, beta=p.beta, cycle_weight=p.cycle_weight,
                             pool_size=p.pool_size)
        return data

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam for both translators, one for all four critics (as CycleGAN chains its pairs)."""
        betas = (self.params.beta1, 0.999)
        return {"G": torch.optim.Adam(self.G.parameters(), lr=self.params.lr, betas=betas),
                "D": torch.optim.Adam(self.D.parameters(), lr=self.params.lr, betas=betas)}

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer], steps: int) -> dict[str, Any]:
        """CycleGAN's ``linear`` policy: constant lr, then linearly to 0 over the last (1 − decay_start) of the steps."""
        start = int(self.params.decay_start * steps)

        def factor(step: int) -> float:
            return 1.0 - max(0, step - start) / float(steps - start + 1)

        return {k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in optimizers.items()}

    def training_step(self, data: Any, step: int, generator: torch.Generator) -> dict[str, float]:
        return self.gan(StepContext(step, 0, generator, self.trainer))

    # -- 6. generation -------------------------------------------------------------------------------
    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample: the orientation (0-7, see :func:`dihedral`) the image is translated in."""
        if self.params.orientation == "identity":
            return Samples({"orientation": 0} for _ in rngs)
        return Samples({"orientation": int(torch.randint(8, (1,), generator=g))} for g in rngs)

    def _replayed(self, samples: Samples) -> Samples:
        out = Samples()
        for i, s in enumerate(samples):
            k = s.get("orientation") if isinstance(s, dict) else None
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < 8:
                raise ValueError(f"samples[{i}]['orientation'] must be an int in [0, 8), got {k!r}")
            out.append({"orientation": k})
        return out

    @torch.no_grad()
    def translate(self, images: torch.Tensor, orientations: Sequence[int] | None = None) -> torch.Tensor:
        """G_nd on images in [0, 1] at the working side (each in its orientation), back in [0, 1]."""
        if self.G is None:
            raise NotFittedError(f"{self.name} has no translators: fit or load it first")
        ks = list(orientations) if orientations is not None else [0] * len(images)
        x = torch.stack([dihedral(im, k) for im, k in zip(images, ks)])
        y = ((self.G["nd"](x.to(self.device) * 2 - 1) + 1) / 2).clamp(0, 1)
        return torch.stack([undo_dihedral(im, k) for im, k in zip(y, ks)])

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Translate at the working side, derive the mask there, upsample both, compose with the input."""
        p = self.params
        drawn = self.sample(batch, rngs)
        samples = drawn if samples is None else self._replayed(samples)
        side = p.sizes()["resolution"]
        x = batch.image
        h, w = batch.size
        small = _resize(x, side)
        y = self.translate(small, [s["orientation"] for s in samples])
        m = derive_mask(small.to(y.device), y, p.mask_threshold, p.mask_open, p.mask_blur)
        if (h, w) != (side, side):
            y = F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
            m = (F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) >= 0.5).float()
        y, m = y.to(x.device), m.to(x.device)
        image = torch.where(m.bool(), y, x) if p.compose else y
        labels = [self.label_name if bool(m[i].any()) else GOOD for i in range(len(batch))]
        out = Batch(image=image.float().contiguous(), mask=m.contiguous(), label=labels,
                    meta=[dict(mm) for mm in batch.meta], object_mask=batch.object_mask, depth=batch.depth,
                    text=batch.text)
        return out, samples
