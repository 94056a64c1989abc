"""Defect-GAN (Zhang, Cui, Hung, Lu — WACV 2021, arXiv 2103.15158): defects by defacement and restoration.

Read top to bottom; the code sections carry the same numbers.

1. **One conditioned generator, two directions.** ``G(x, S, noise)`` defaces a normal image
   (normal → defect of type *k*) or restores a defective one (defect → normal). The target
   class enters through the *spatial distribution (SD) map* ``S`` with one channel per class
   (``normal`` + the defect types): ``S = onehot(c) ⊗ M`` — the class's channel is on where the
   change goes (defacement: the defect's SD region; restoration: the region to make normal) and
   all channels are off elsewhere. ``S`` modulates every decoder block
   SPADE-style, and *adaptive noise* (a noise map times a learned per-channel multiplier)
   gives the stochastic variation of real defects (:mod:`anoplug_defect_gan.networks`).
2. **Layer-wise composition.** G's head gives a foreground layer ``F`` (tanh) and an alpha /
   SD map ``A`` (sigmoid); the output is ``y = A·F + (1 − A)·x``, so pixels where ``A ≈ 0``
   stay the input's. Applying G again on ``y`` stacks a second defect layer (``layers``).
3. **Critic.** PatchGAN scores plus an auxiliary classifier over the classes (StarGAN's D),
   trained as a WGAN-GP critic (λ_gp 10, one critic update per G update); spectral norm on
   G and D; Adam(1e-4, β = (0, 0.9)); G is used through its EMA (0.999).
4. **Losses** (weights of the unofficial code): adversarial; classification of fakes (G, 10)
   and of reals (D, 5); SD-map reconstruction ``‖½(A_deface + A_restore) − M‖₁`` (3); cycle
   reconstruction ``‖restore(deface(x)) − x‖₁`` (10); SD-map cycle ``‖A_deface − A_restore‖₁``
   (10); mask vanishing ``−log(mean of A inside M)`` (3); spatial sparsity ``mean(A)`` (5).
5. **Training step.** Both cycles at once: normals are defaced to a drawn (type, SD map) and
   restored; real defects are restored and defaced back to their own type and mask; D sees
   the real normals and defects against both kinds of fakes (:class:`DefectGANStep`).
6. **Generation.** Per sample a type (``conditions.defect_type`` or uniform over the fitted
   types) and an SD map (``conditions.target_mask``, or a real mask of that type from the fit,
   flipped and moved to a random place) are drawn from the sample's rng, then the noise;
   the mask is ``(A > mask_threshold) ∧ (|y − x| > mask_tol)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from anoplug.conditions import ConditionError
from anoplug.generator import NotFittedError, Paper, Requires, Samples
from anoplug.learned import LearnedGenerator
from anoplug.params import Params
from anoplug.train import GANBatch, GANStep, StepContext, apply_spectral_norm
from anoplug.train.gan import refresh_spectral_norm
from anoplug.types import GOOD, Batch
from anoplug_defect_gan.networks import DefectGenerator, PatchCritic, critic_feature_size

__all__ = ["DefectGAN", "DefectGANParams", "DefectGANStep", "PRESETS", "sd_map", "compose", "vanishing_loss",
           "spatial_loss", "NORMAL"]

NORMAL = 0  #: class index of "normal" (defect type i has class i + 1)

#: architecture per preset: the unofficial code's 224² configuration, and the spec's smallest faithful CPU one
PRESETS: dict[str, dict[str, int]] = {
    "paper": {"resolution": 224, "width": 64, "n_down": 3, "n_res": 6, "critic_width": 64, "critic_blocks": 6,
              "spade_hidden": 128},
    "cpu": {"resolution": 64, "width": 16, "n_down": 2, "n_res": 3, "critic_width": 16, "critic_blocks": 4,
            "spade_hidden": 16},
}


class DefectGANParams(Params):
    # -- architecture (0 = the preset's value) ------------------------------------------------------
    preset: Literal["paper", "cpu"] = Field("cpu", description="'paper': 224², width 64, 3 down, 6 residual blocks; "
                                            "'cpu': 64², width 16, 2 down, 3 residual blocks")
    resolution: int = Field(0, ge=0, le=1024, description="working side in px (0 = preset)")
    width: int = Field(0, ge=0, le=256, description="generator base width (0 = preset)")
    n_down: int = Field(0, ge=0, le=5, description="down-/up-sampling blocks of G (0 = preset)")
    n_res: int = Field(0, ge=0, le=16, description="residual blocks of G's bottleneck (0 = preset)")
    critic_width: int = Field(0, ge=0, le=256, description="critic base width (0 = preset)")
    critic_blocks: int = Field(0, ge=0, le=8, description="stride-2 blocks of the critic (0 = preset)")
    spade_hidden: int = Field(0, ge=0, le=512, description="hidden channels of each SPADE (0 = preset)")
    spectral_norm: bool = Field(True, description="spectral norm on every conv of G and D (unofficial code: on)")
    # -- training -------------------------------------------------------------------------------------
    fit_steps: int = Field(2000, ge=1, le=1_000_000, description="training steps (one D and one G update each)")
    batch_size: int = Field(8, ge=1, le=256, description="normals and real defects per step, each (unofficial: 1)")
    lr: float = Field(1e-4, gt=0, le=1.0, description="Adam learning rate of G and D")
    beta1: float = Field(0.0, ge=0, lt=1, description="Adam β1 (WGAN-GP: 0)")
    beta2: float = Field(0.9, ge=0, lt=1, description="Adam β2 (WGAN-GP: 0.9)")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay of G used after fit (0 = no EMA)")
    gp_weight: float = Field(10.0, ge=0, le=1000, description="WGAN-GP penalty weight λ_gp")
    w_cls_g: float = Field(10.0, ge=0, le=1000, description="weight of the fake-classification loss of G")
    w_cls_d: float = Field(5.0, ge=0, le=1000, description="weight of the real-classification loss of D")
    w_rec: float = Field(3.0, ge=0, le=1000, description="weight of the SD-map reconstruction ‖½(A_def+A_res) − M‖₁")
    w_cycle: float = Field(10.0, ge=0, le=1000, description="weight of the cycle reconstruction ‖restore(deface(x)) − x‖₁")
    w_cycle_mask: float = Field(10.0, ge=0, le=1000, description="weight of the SD-map cycle ‖A_deface − A_restore‖₁")
    w_vanishing: float = Field(3.0, ge=0, le=1000, description="weight of the mask-vanishing term −log(mean A in M)")
    w_spatial: float = Field(5.0, ge=0, le=1000, description="weight of the spatial sparsity term mean(A)")
    augment: bool = Field(True, description="random flips of the training images (our assumption)")
    # -- generation -----------------------------------------------------------------------------------
    layers: int = Field(1, ge=1, le=4, description="defect layers composed per sample (layer-wise composition)")
    sd_flip: bool = Field(True, description="flip drawn SD maps at random (training and generation)")
    sd_shift: bool = Field(True, description="move drawn SD maps to a random place (training and generation)")
    mask_threshold: float = Field(0.5, gt=0, lt=1, description="mask = A > this ...")
    mask_tol: float = Field(2 / 255, ge=0, lt=1, description="... and a channel moved more than this (2/255)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the initial weights and of fit's draws")

    @model_validator(mode="after")
    def _divisible(self) -> DefectGANParams:
        a = self.arch()
        if a["resolution"] % (2 ** a["n_down"]) or a["resolution"] < 16:
            raise ValueError(f"resolution {a['resolution']} must be >= 16 and divisible by 2**n_down = {2 ** a['n_down']}")
        if critic_feature_size(a["resolution"], a["critic_blocks"]) < 1:
            raise ValueError(f"resolution {a['resolution']} is too small for critic_blocks = {a['critic_blocks']}")
        return self

    def arch(self) -> dict[str, int]:
        """The architecture in use: the preset's values where the field is 0."""
        return {k: int(getattr(self, k)) or v for k, v in PRESETS[self.preset].items()}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Initial weights from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _to_net(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


def _to_img(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


def _binary_at(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A {0,1} mask at ``size``: area > 0.5, or > 0 for a mask that would otherwise vanish (thin threads)."""
    if tuple(mask.shape[-2:]) == (size, size):
        return (mask > 0.5).float()
    soft = F.interpolate(mask.float(), size=(size, size), mode="area")
    hard = (soft > 0.5).float()
    empty = hard.flatten(1).sum(1) == 0
    return torch.where(empty[:, None, None, None], (soft > 0).float(), hard)


# -- 1. the SD map ----------------------------------------------------------------------------------------
def sd_map(classes: torch.Tensor, region: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``S = onehot(c) ⊗ M``: the target class ``c`` where ``region`` is 1, the zero vector (no change asked) elsewhere.

    ``classes`` [B] (``NORMAL`` = restoration of ``region``), ``region`` [B,1,H,W] in [0, 1]
    (soft values allowed). With ``M ≡ 1`` this is the paper's training map (the target label
    repeated over the image); with ``M`` a defect mask it is the unofficial code's map, whose
    mask sits in the class's channel and zeros everywhere else.
    """
    onehot = F.one_hot(classes.long(), n_classes).to(region.dtype)[:, :, None, None]
    return onehot * region


# -- 2. layer-wise composition ---------------------------------------------------------------------------
def compose(x: torch.Tensor, foreground: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``y = A·F + (1 − A)·x``: the defect layer over the background (any affine image range)."""
    return alpha * foreground + (1 - alpha) * x


# -- 4. the alpha-map terms --------------------------------------------------------------------------------
def vanishing_loss(alpha: torch.Tensor, region: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``−log(mean of A inside M)`` per sample, averaged over samples whose ``region`` is not empty.

    Sign: minimising it *raises* A where the SD map asks for a change, so the alpha map (and
    with it the defect) cannot vanish — the trivial way to satisfy the cycle loss. The
    unofficial code takes ``−log(mean A)`` over the whole image, which with the spatial term
    ``5·mean A`` has its optimum at a fixed coverage (``Σ mean A = 3/5``) whatever the defect's
    size; measured inside ``M`` it only stops the collapse and leaves sparsity to
    :func:`spatial_loss`.
    """
    area = region.flatten(1).sum(1)
    inside = (alpha * region).flatten(1).sum(1) / area.clamp_min(1e-12)
    keep = area > 0
    if not bool(keep.any()):
        return alpha.sum() * 0
    return -(inside[keep] + eps).log().mean()


def spatial_loss(alpha: torch.Tensor) -> torch.Tensor:
    """``mean(A)`` = ‖A‖₁ / N: sparsity, so G changes a compact region and keeps the background (pushes A down)."""
    return alpha.mean()


# -- 3.-5. the GAN step ---------------------------------------------------------------------------------------
class DefectGANStep(GANStep):
    """One WGAN-GP step of both cycles (n_critic = 1: D, then G on the same batch and fakes).

    ``generate`` runs the four generator passes; D compares real normals + real defects with
    (defaced normals + restored defects) and classifies the reals; G gets every term of step 4,
    each logged as ``g/<name>``.
    """

    def __init__(self, G: DefectGenerator, D: PatchCritic, sample: Any, *, weights: dict[str, float],
                 gp_weight: float) -> None:
        self.w = dict(weights)
        super().__init__(G, D, sample, loss="wgan-gp", n_critic=1, gp_weight=gp_weight, d_extra=self._d_cls)

    def generate(self, batch: GANBatch) -> dict[str, Any]:
        e = batch.extra
        n1, n2, n3, n4 = e["noise"]
        f1, a1 = self.G(e["normals"], e["sd_deface"], n1)  # defacement
        fake_defects = compose(e["normals"], f1, a1)
        f2, a2 = self.G(fake_defects, e["sd_restore"], n2)  # restoration of the fake
        cycled_normals = compose(fake_defects, f2, a2)
        f3, a3 = self.G(e["defects"], e["sd_restore_real"], n3)  # restoration of a real defect
        fake_normals = compose(e["defects"], f3, a3)
        f4, a4 = self.G(fake_normals, e["sd_real"], n4)  # defacement back to its own type and mask
        cycled_defects = compose(fake_normals, f4, a4)
        return {"fake": torch.cat([fake_defects, fake_normals]), "cycled": torch.cat([cycled_normals, cycled_defects]),
                "alpha": (a1, a2, a3, a4)}

    def d_terms(self, ctx: StepContext, batch: GANBatch, fake: Any, d_index: int) -> dict[str, torch.Tensor]:
        return super().d_terms(ctx, batch, fake["fake"], d_index)

    def _d_cls(self, ctx: StepContext, batch: GANBatch, real_out: Any, fake_out: Any) -> dict[str, torch.Tensor]:
        return {"cls": self.w["cls_d"] * F.cross_entropy(real_out[1], batch.extra["real_labels"])}

    def g_terms(self, ctx: StepContext, batch: GANBatch, fake: Any) -> dict[str, torch.Tensor]:
        e, w = batch.extra, self.w
        out = self.discriminate(fake["fake"], batch)
        a1, a2, a3, a4 = fake["alpha"]
        m, md = e["region"], e["real_region"]
        return {
            "adv": self.g_loss_fn(out[0]),
            "cls": w["cls_g"] * F.cross_entropy(out[1], e["fake_labels"]),
            "rec": w["rec"] * 0.5 * ((0.5 * (a1 + a2) - m).abs().mean() + (0.5 * (a3 + a4) - md).abs().mean()),
            "cycle": w["cycle"] * (fake["cycled"] - batch.real).abs().mean(),
            "cycle_mask": w["cycle_mask"] * 0.5 * ((a1 - a2).abs().mean() + (a3 - a4).abs().mean()),
            "vanishing": w["vanishing"] * 0.25 * (vanishing_loss(a1, m) + vanishing_loss(a2, m)
                                                  + vanishing_loss(a3, md) + vanishing_loss(a4, md)),
            "spatial": w["spatial"] * 0.25 * sum(spatial_loss(a) for a in (a1, a2, a3, a4)),
        }


class DefectGAN(LearnedGenerator):
    """``fit(normals, anomalies)`` on normal images and real defects (images, masks, type labels), then ``generate``.

    ``conditions.defect_type`` picks the type and ``conditions.target_mask`` the SD map (where
    the defect goes) per sample; without them both are drawn from the fitted data.
    """

    name = "defect-gan"
    title = "Defect-GAN: defacement/restoration GAN with layer-wise composition"
    category = "gan"
    tags = ("mask",)
    paper = Paper("Defect-GAN: High-Fidelity Defect Synthesis for Automated Defect Inspection", "WACV", 2021,
                  "https://arxiv.org/abs/2103.15158", "")
    Params = DefectGANParams
    requires = Requires(fit=True, anomalies=True, accepts=("defect_type", "target_mask"))
    manual_optimization: ClassVar[bool] = True
    pretrained: ClassVar[dict[str, str]] = {"fabric": "weights/fabric"}

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.types: list[str] = []
        self.G: DefectGenerator | None = None
        self.D: PatchCritic | None = None
        self.bank: torch.Tensor | None = None  # uint8 [N,1,R,R]: the fitted masks SD maps are drawn from
        self.bank_types: torch.Tensor | None = None  # int64 [N]: their type index
        self.history: list[dict] = []
        self.gan: DefectGANStep | None = None

    @property
    def ema(self) -> dict[str, float]:  # type: ignore[override]
        """G's EMA decay from the parameters (the base reads a class attribute)."""
        return {"G": self.params.ema_decay} if self.params.ema_decay > 0 else {}

    @property
    def resolution(self) -> int:
        return self.params.arch()["resolution"]

    @property
    def n_classes(self) -> int:
        return 1 + len(self.types)

    # -- networks and persistence -----------------------------------------------------------------------
    def _build_networks(self, types: Sequence[str]) -> None:
        a = self.params.arch()
        self.types = list(types)
        with _seeded(self.params.seed):
            self.G = DefectGenerator(self.n_classes, a["width"], a["n_down"], a["n_res"], a["spade_hidden"])
            self.D = PatchCritic(self.n_classes, a["resolution"], a["critic_width"], a["critic_blocks"])
        if self.params.spectral_norm:  # 3. spectral norm on G and D
            apply_spectral_norm(self.G)
            apply_spectral_norm(self.D)
        self.G.to(self.device).eval()  # eval: spectral norm then uses its stored vectors (no power iteration)
        self.D.to(self.device).eval()

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D} if self.G is not None and self.D is not None else {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        if self.bank is None or self.bank_types is None:
            return {}
        return {"bank": self.bank, "bank_types": self.bank_types}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) != {"bank", "bank_types"}:
            raise ValueError(f"expected the SD-map bank (bank, bank_types), got {sorted(tensors)}")
        bank, kinds = tensors["bank"], tensors["bank_types"]
        r = self.resolution
        if bank.dtype != torch.uint8 or bank.ndim != 4 or tuple(bank.shape[1:]) != (1, r, r) or len(kinds) != len(bank):
            raise ValueError(f"bank must be uint8 [N,1,{r},{r}] with one type per mask, got {list(bank.shape)}")
        if len(kinds) and (int(kinds.min()) < 0 or int(kinds.max()) >= len(self.types)):
            raise ValueError("bank_types holds a type index outside the fitted types")
        self.bank, self.bank_types = bank.clone(), kinds.long().clone()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "types": list(self.types)}

    def restore_config(self, config: dict[str, Any]) -> None:
        types = config.get("types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise ValueError(f"{self.name}: config.json lists no fitted defect types")
        self._build_networks(types)

    # -- 5. training -------------------------------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> dict[str, Any]:
        """Resize normals and real defects to the working size, keep the defect masks as the SD-map bank, build G and D."""
        if normals is None or len(normals) == 0:
            raise ValueError(f"{self.name}.fit needs normal images (the backgrounds defacement starts from)")
        if anomalies is None or len(anomalies) == 0:
            raise ValueError(f"{self.name}.fit needs anomalies: real defect images with masks and type labels")
        keep = [i for i in range(len(anomalies)) if anomalies.label[i] != GOOD and bool(anomalies.mask[i].any())]
        if not keep:
            raise ValueError(f"{self.name}.fit: none of the {len(anomalies)} anomalies has a defect label and a mask")
        defects = anomalies[keep]
        r = self.resolution
        types = sorted(set(defects.label))
        self._build_networks(types)
        masks = _binary_at(defects.mask, r)
        self.bank = masks.to(torch.uint8).cpu()
        self.bank_types = torch.tensor([types.index(t) for t in defects.label], dtype=torch.long)
        p = self.params
        self.gan = DefectGANStep(self.G, self.D, self._training_batch, gp_weight=p.gp_weight, weights={
            "cls_g": p.w_cls_g, "cls_d": p.w_cls_d, "rec": p.w_rec, "cycle": p.w_cycle, "cycle_mask": p.w_cycle_mask,
            "vanishing": p.w_vanishing, "spatial": p.w_spatial})
        self._data = {"normals": _to_net(_resize(normals.image, (r, r)).clamp(0, 1)).to(self.device),
                      "defects": _to_net(_resize(defects.image, (r, r)).clamp(0, 1)).to(self.device),
                      "masks": masks.to(self.device), "classes": (self.bank_types + 1).to(self.device)}
        return self._data

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.params.beta1, self.params.beta2)
        return {n: torch.optim.Adam(m.parameters(), lr=self.params.lr, betas=betas) for n, m in self.modules().items()}

    def training_step(self, data: Any, step: int, generator: torch.Generator) -> dict[str, float]:
        return self.gan(StepContext(step, 0, generator, self.trainer))

    def fit(self, *args: Any, **kwargs: Any) -> DefectGAN:
        """The base's fit; then the power-iteration vectors of G's spectral norm are refreshed for its EMA weights."""
        super().fit(*args, **kwargs)
        if self.ema and self.params.spectral_norm and self.G is not None:
            refresh_spectral_norm(self.G)
        return self

    def _noise(self, n: int, g: torch.Generator) -> list[torch.Tensor]:
        r = self.resolution
        return [torch.randn(n, *s, generator=g).to(self.device) for s in self.G.noise_shapes(r, r)]

    def _training_batch(self, ctx: StepContext) -> GANBatch:
        """Draw normals, real defects (with their masks and types), the defacement targets and four noise sets."""
        d, g, b = self._data, ctx.generator, self.params.batch_size
        i_n = torch.randint(len(d["normals"]), (b,), generator=g)
        i_d = torch.randint(len(d["defects"]), (b,), generator=g)
        normals, defects, masks = d["normals"][i_n], d["defects"][i_d], d["masks"][i_d]
        if self.params.augment:
            flips = torch.rand(b, 3, generator=g) < 0.5
            normals = torch.where(flips[:, 0, None, None, None].to(self.device), normals.flip(-1), normals)
            both = torch.cat([defects, masks], 1)
            both = torch.where(flips[:, 1, None, None, None].to(self.device), both.flip(-1), both)
            both = torch.where(flips[:, 2, None, None, None].to(self.device), both.flip(-2), both)
            defects, masks = both[:, :3], both[:, 3:]
        records = [self.draw_layer(g) for _ in range(b)]
        region = torch.stack([self.render(r) for r in records]).to(self.device)
        target = torch.tensor([1 + self.types.index(r["defect_type"]) for r in records], device=self.device)
        real_cls = d["classes"][i_d]
        k = self.n_classes
        zeros = torch.zeros(b, dtype=torch.long, device=self.device)
        extra = {"normals": normals, "defects": defects, "region": region, "real_region": masks,
                 "sd_deface": sd_map(target, region, k), "sd_restore": sd_map(zeros, region, k),
                 "sd_restore_real": sd_map(zeros, masks, k), "sd_real": sd_map(real_cls, masks, k),
                 "noise": [self._noise(b, g) for _ in range(4)],
                 "real_labels": torch.cat([zeros, real_cls]), "fake_labels": torch.cat([target, zeros])}
        return GANBatch(real=torch.cat([normals, defects]), g_input=None, extra=extra)

    # -- 6. generation: SD maps drawn from the fitted masks --------------------------------------------------------
    def draw_layer(self, rng: torch.Generator, defect_type: str | None = None) -> dict[str, Any]:
        """One layer's choices: type (uniform, unless given), one fitted mask of that type, flips, placement.

        The same number of draws whatever is given, so the noise that follows starts at the same place.
        """
        if self.bank is None:
            raise NotFittedError(f"{self.name} has no fitted SD maps")
        t = int(torch.randint(len(self.types), (1,), generator=rng))
        name = self.types[t] if defect_type is None else defect_type
        pool = (self.bank_types == self.types.index(name)).nonzero().flatten()
        j = int(pool[int(torch.randint(len(pool), (1,), generator=rng))])
        u = torch.rand(4, generator=rng)
        fh, fv = self.params.sd_flip and bool(u[0] < 0.5), self.params.sd_flip and bool(u[1] < 0.5)
        y0, y1, x0, x1 = self._bbox(self._flipped(j, fh, fv))
        r = self.resolution
        if self.params.sd_shift:
            top, left = int(u[2] * (r - (y1 - y0) + 1)), int(u[3] * (r - (x1 - x0) + 1))
        else:
            top, left = y0, x0
        return {"defect_type": name, "source": j, "flip_h": fh, "flip_v": fv, "top": top, "left": left}

    def _flipped(self, j: int, fh: bool, fv: bool) -> torch.Tensor:
        m = self.bank[j].float()
        if fh:
            m = m.flip(-1)
        if fv:
            m = m.flip(-2)
        return m

    @staticmethod
    def _bbox(m: torch.Tensor) -> tuple[int, int, int, int]:
        ys, xs = m[0].nonzero(as_tuple=True)
        return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1

    def render(self, record: dict[str, Any]) -> torch.Tensor:
        """The SD region ``[1,R,R]`` of a layer record: the fitted mask, flipped, its bounding box moved to (top, left)."""
        m = self._flipped(int(record["source"]), bool(record["flip_h"]), bool(record["flip_v"]))
        y0, y1, x0, x1 = self._bbox(m)
        out = torch.zeros_like(m)
        top, left = int(record["top"]), int(record["left"])
        out[:, top: top + y1 - y0, left: left + x1 - x0] = m[:, y0:y1, x0:x1]
        return out

    def _check_types(self, batch: Batch) -> list[str] | None:
        wanted = batch.conditions.defect_type
        if wanted is None:
            return None
        bad = [t for t in wanted if t not in self.types]
        if bad:
            raise ConditionError(f"conditions.defect_type {bad[0]!r} was not fitted; {self.name} knows: "
                                 f"{', '.join(self.types)}")
        return list(wanted)

    def sample(self, batch: Batch, rngs: Sequence[torch.Generator]) -> Samples:
        """Per sample and layer: type and SD-map choices (layer 1 follows ``defect_type`` / ``target_mask`` if given)."""
        if not self.types or self.bank is None:
            raise NotFittedError(f"{self.name} has no fitted defect types")
        wanted = self._check_types(batch)
        given_mask = batch.conditions.target_mask is not None
        out = Samples()
        for i, rng in enumerate(rngs):
            layers = []
            for layer in range(self.params.layers):
                rec = self.draw_layer(rng, wanted[i] if wanted is not None and layer == 0 else None)
                rec["region"] = "target_mask" if given_mask and layer == 0 else "fitted_mask"
                layers.append(rec)
            out.append({"layers": layers})
        return out

    def _replayed(self, samples: Samples) -> Samples:
        """Check replayed records against this model (types fitted, masks in the bank, placement in range)."""
        r, n = self.resolution, 0 if self.bank is None else len(self.bank)
        for i, s in enumerate(samples):
            layers = s.get("layers") if isinstance(s, dict) else None
            if not isinstance(layers, list) or len(layers) != self.params.layers:
                raise ValueError(f"samples[{i}] must hold {self.params.layers} layer record(s)")
            for rec in layers:
                ok = (isinstance(rec, dict) and rec.get("defect_type") in self.types
                      and isinstance(rec.get("source"), int) and 0 <= rec["source"] < n
                      and all(isinstance(rec.get(k), bool) for k in ("flip_h", "flip_v"))
                      and all(isinstance(rec.get(k), int) and 0 <= rec[k] < r for k in ("top", "left")))
                if not ok:
                    raise ValueError(f"samples[{i}]: layer record {rec!r} does not fit this model "
                                     f"(types {self.types}, {n} fitted masks, {r}px)")
        return samples

    def _layer(self, x: torch.Tensor, classes: torch.Tensor, region: torch.Tensor,
               noise: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One G pass on images ``x`` in [0, 1] at the working size: (foreground in [0, 1], alpha)."""
        fg, alpha = self.G(_to_net(x), sd_map(classes, region, self.n_classes), noise)
        return _to_img(fg), alpha

    @torch.no_grad()
    def generate_batch(self, batch: Batch, rngs: Sequence[torch.Generator],
                       samples: Samples | None = None) -> tuple[Batch, Samples]:
        """Draw (or replay) the layer records, then the noise from the same rngs, then compose layer by layer.

        G runs at the working size on a resized copy; each layer's A and F are resized back and
        composed over the full-size image, so where A ≈ 0 the pixels are the input's own.
        """
        drawn = self.sample(batch, rngs)  # advances every rng to where its noise starts, replay or not
        self.G.eval()  # a module left in training mode would run spectral norm's power iteration here
        samples = drawn if samples is None else self._replayed(Samples(samples))
        r, (h, w), dev = self.resolution, batch.size, self.device
        noise = [[[torch.randn(*s, generator=g) for s in self.G.noise_shapes(r, r)] for _ in range(self.params.layers)]
                 for g in rngs]
        full = batch.image.to(dev)
        work = _resize(full, (r, r)).clamp(0, 1)
        target = batch.conditions.target_mask
        target_work = None if target is None else F.interpolate(target.to(dev), size=(r, r), mode="area")
        out, alpha_max = full, torch.zeros(len(batch), 1, h, w, device=dev)
        for layer in range(self.params.layers):
            recs = [s["layers"][layer] for s in samples]
            if layer == 0 and target_work is not None:
                region = target_work
            else:
                region = torch.stack([self.render(rec) for rec in recs]).to(dev)
            classes = torch.tensor([1 + self.types.index(rec["defect_type"]) for rec in recs], device=dev)
            maps = [torch.stack([noise[i][layer][k] for i in range(len(batch))]).to(dev) for k in range(len(noise[0][0]))]
            fg, alpha = self._layer(work, classes, region, maps)
            work = compose(work, fg, alpha).clamp(0, 1)  # 2. the next layer starts from this one
            if (h, w) != (r, r):
                fg, alpha = _resize(fg, (h, w)), _resize(alpha, (h, w)).clamp(0, 1)
            out = compose(out, fg, alpha)
            alpha_max = torch.maximum(alpha_max, alpha)
        out = out.clamp(0, 1)
        delta = (out - full).abs().amax(1, keepdim=True)
        mask = ((alpha_max > self.params.mask_threshold) & (delta > self.params.mask_tol)).float()
        labels = []
        for i, s in enumerate(samples):
            names = "+".join(dict.fromkeys(rec["defect_type"] for rec in s["layers"]))
            labels.append(names if bool(mask[i].any()) else GOOD)
        result = Batch(image=out.float().contiguous(), mask=mask, label=labels, meta=[dict(m) for m in batch.meta],
                       object_mask=batch.object_mask, depth=batch.depth, text=batch.text)
        return result, samples

    @torch.no_grad()
    def restore(self, images: torch.Tensor, region: torch.Tensor | None = None, *, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Restoration (defect → normal) at the working size: ``(restored, alpha)``.

        ``images`` [B,3,H,W] in [0, 1]; ``region`` [B,1,H,W] says where to restore (default: the
        whole image, the paper's label-repeated map). Noise from ``seed``.
        """
        if self.G is None:
            raise NotFittedError(f"{self.name} must be fitted or loaded before restore")
        r = self.resolution
        x = _resize(images.to(self.device), (r, r)).clamp(0, 1)
        where = torch.ones(len(x), 1, r, r, device=self.device) if region is None else \
            F.interpolate(region.float().to(self.device), size=(r, r), mode="area")
        noise = self._noise(len(x), torch.Generator().manual_seed(seed))
        zeros = torch.zeros(len(x), dtype=torch.long, device=self.device)
        fg, alpha = self._layer(x, zeros, where, noise)
        return compose(x, fg, alpha).clamp(0, 1), alpha
