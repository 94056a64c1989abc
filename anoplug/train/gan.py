"""GAN training on :class:`anoplug.train.Trainer`: D/G alternation, the usual losses and regularisers.

The GAN methods of ``classic.md`` §6 (Defect-GAN, DT-GAN, SDGAN / CycleGAN-style, the
fabric GANs, EID-GAN) differ in their networks and extra loss terms, not in the loop:
``n_critic`` discriminator updates, then one generator update, with one of four adversarial
losses, a gradient or R1 penalty, spectral norm, a generator EMA and (CycleGAN) a history
pool of fakes. This module gives those once:

- loss functions (each docstring has its paper's formula): :func:`nonsaturating_d_loss` /
  :func:`nonsaturating_g_loss`, :func:`hinge_d_loss` / :func:`hinge_g_loss`,
  :func:`lsgan_d_loss` / :func:`lsgan_g_loss`, :func:`wgan_d_loss` / :func:`wgan_g_loss`;
  penalties :func:`gradient_penalty` (WGAN-GP) and :func:`r1_penalty`;
- :func:`apply_spectral_norm` / :func:`refresh_spectral_norm`;
- :class:`ImagePool` — CycleGAN's 50-image history buffer;
- :class:`GANStep` — the step function (manual optimisation): what a plugin's
  ``training_step`` calls, or what :class:`GANTrainer` runs; subclass it and override
  :meth:`GANStep.generate`, :meth:`GANStep.d_terms`, :meth:`GANStep.g_terms` for
  several networks (CycleGAN's two generators and two discriminators);
- :class:`GANTrainer` — a ready run: default Adam(2e-4, (0.5, 0.999)) optimisers, the EMA of
  the generator applied at the end, checkpoints (pool included) and exact resume.

Every random draw (latents in the user's ``sample``, WGAN-GP's interpolation weights, the
pool's choices) comes from the run's seeded ``ctx.generator``, so a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from anoplug.train.loop import MixedPrecision, Progress, StepContext, Trainer

__all__ = [
    "nonsaturating_d_loss", "nonsaturating_g_loss", "hinge_d_loss", "hinge_g_loss", "lsgan_d_loss",
    "lsgan_g_loss", "wgan_d_loss", "wgan_g_loss", "gradient_penalty", "r1_penalty", "GAN_LOSSES", "GANLoss",
    "apply_spectral_norm", "refresh_spectral_norm", "ImagePool", "GANBatch", "GANStep", "GANTrainer",
    "default_optimizer",
]

GANLoss = Literal["nonsaturating", "hinge", "lsgan", "wgan-gp"]


# -- adversarial losses (logits in, scalar out) ----------------------------------------------------
def nonsaturating_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Goodfellow et al. 2014, the discriminator's cross-entropy on logits ``l`` (σ = sigmoid).

    L_D = −E[log σ(l_real)] − E[log(1 − σ(l_fake))] = E[softplus(−l_real)] + E[softplus(l_fake)]
    (softplus form: the numerically stable BCE-with-logits).
    """
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def nonsaturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Goodfellow et al. 2014 §3, the "−log D trick": L_G = −E[log σ(l_fake)] = E[softplus(−l_fake)].

    Minimising −log D instead of log(1 − D) keeps strong gradients early in training.
    """
    return F.softplus(-fake_logits).mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Lim & Ye 2017 (Geometric GAN); Miyato et al. 2018 (SNGAN) eq. 17; BigGAN.

    L_D = E[max(0, 1 − D(x))] + E[max(0, 1 + D(G(z)))].
    """
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge GAN's generator loss (SNGAN eq. 17): L_G = −E[D(G(z))]."""
    return -fake_logits.mean()


def lsgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, *, a: float = 0.0,
                 b: float = 1.0) -> torch.Tensor:
    """Mao et al. 2017 (LSGAN) eq. 2 with the 0-1 coding (a = 0 fake, b = 1 real):

    L_D = ½ E[(D(x) − b)²] + ½ E[(D(G(z)) − a)²].  This is CycleGAN's D loss (MSE, halved).
    """
    return 0.5 * (real_logits - b).square().mean() + 0.5 * (fake_logits - a).square().mean()


def lsgan_g_loss(fake_logits: torch.Tensor, *, c: float = 1.0) -> torch.Tensor:
    """Mao et al. 2017 eq. 2: L_G = ½ E[(D(G(z)) − c)²] with c = 1.

    CycleGAN's G loss is the plain MSE, i.e. 2× this: scale its other terms (λ_cyc = 10) by ½
    to match, or subclass :class:`GANStep`.
    """
    return 0.5 * (fake_logits - c).square().mean()


def wgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Arjovsky et al. 2017 / Gulrajani et al. 2017 Alg. 1, the critic: L_D = E[D(x̃)] − E[D(x)].

    (The gradient penalty is added separately: :func:`gradient_penalty`.)
    """
    return fake_logits.mean() - real_logits.mean()


def wgan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """WGAN's generator: L_G = −E[D(G(z))]."""
    return -fake_logits.mean()


#: name -> (discriminator loss, generator loss, default gradient-penalty weight)
GAN_LOSSES: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], float]] = {
    "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss, 0.0),
    "hinge": (hinge_d_loss, hinge_g_loss, 0.0),
    "lsgan": (lsgan_d_loss, lsgan_g_loss, 0.0),
    "wgan-gp": (wgan_d_loss, wgan_g_loss, 10.0),
}


# -- penalties ---------------------------------------------------------------------------------------
def _uniform(n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """U[0, 1) draws from ``generator`` (on its own device), moved to ``like``'s device and dtype."""
    return torch.rand(n, generator=generator, device=generator.device).to(like.device, like.dtype)


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator, *, center: float = 1.0) -> torch.Tensor:
    """Gulrajani et al. 2017 (WGAN-GP) eq. 3, the penalty *without* its weight λ (10 in the paper):

    E_x̂[(‖∇_x̂ D(x̂)‖₂ − 1)²],  x̂ = ε x + (1 − ε) x̃,  ε ~ U[0, 1] per sample (from ``generator``).

    The graph is kept (``create_graph``) so the penalty trains the critic.
    """
    eps = _uniform(real.shape[0], generator, real).view(-1, *([1] * (real.dim() - 1)))
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - center).square().mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mescheder et al. 2018 eq. 9, without its weight γ/2: E_{x~p_data}[‖∇_x D(x)‖²].

    ``real`` must have had ``requires_grad`` set before ``real_logits = D(real)``. The full
    R1 term is (γ/2) · this; with lazy regularisation every k D steps (StyleGAN2 §B) it is
    (γ/2) · k · this on those steps only.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.flatten(1).square().sum(1).mean()


# -- spectral norm -------------------------------------------------------------------------------------
_SN_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                          nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def apply_spectral_norm(module: nn.Module, *, skip: Iterable[str] | Callable[[str, nn.Module], bool] = (),
                        types: tuple[type[nn.Module], ...] = _SN_TYPES, n_power_iterations: int = 1,
                        eps: float = 1e-12) -> nn.Module:
    """Put ``torch.nn.utils.parametrizations.spectral_norm`` on every conv / linear layer (Miyato et al. 2018).

    ``skip``: qualified sub-module names (a name skips its children too) or a predicate
    ``(name, module) -> bool``; ``types`` adds e.g. ``nn.Embedding`` (projection discriminators).
    Layers already spectrally normalised are left alone. Returns ``module`` (changed in place).
    """
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    if callable(skip):
        skipped = skip
    else:
        names = tuple(skip)

        def skipped(name: str, _m: nn.Module) -> bool:
            return any(name == s or name.startswith(s + ".") for s in names)

    for name, m in list(module.named_modules()):
        if isinstance(m, types) and not skipped(name, m) and not parametrize.is_parametrized(m, "weight"):
            spectral_norm(m, n_power_iterations=n_power_iterations, eps=eps)
    return module


def _spectral_layers(module: nn.Module) -> Iterator[nn.Module]:
    from torch.nn.utils import parametrize

    for m in module.modules():
        if parametrize.is_parametrized(m, "weight") and any(
                hasattr(p, "_u") and hasattr(p, "n_power_iterations") for p in m.parametrizations.weight):
            yield m


def refresh_spectral_norm(module: nn.Module, iterations: int = 10) -> nn.Module:
    """Run ``iterations`` power iterations on every spectrally normalised layer (no gradients).

    An EMA averages the power-iteration vectors u, v with the weights (the Trainer's EMA keeps
    buffers), so they are no longer unit vectors and eval-mode σ = uᵀWv is off; a few power
    iterations on the averaged weight restore it. Also useful after loading foreign weights.
    """
    layers = list(_spectral_layers(module))
    with torch.no_grad():
        for m in layers:
            was = m.training
            m.train(True)  # the parametrisation iterates only in training mode, at each weight access
            try:
                for _ in range(iterations):
                    m.weight  # noqa: B018 - the access runs the power iteration
            finally:
                m.train(was)
    return module


# -- image pool ------------------------------------------------------------------------------------------
class ImagePool:
    """CycleGAN's history of generated images (Shrivastava et al. 2017 §2.3; Zhu et al. 2017 §4).

    The discriminator sees a mix of current and earlier fakes, which damps oscillation. Per
    image of a batch: while fewer than ``size`` are stored, store it and return it; then with
    probability ½ return a uniformly chosen stored image and store the new one in its place,
    otherwise return the new image. ``size = 0`` returns the batch unchanged. Draws come from
    the ``generator`` given to :meth:`query`. State (the stored images) is a tensor dict, so
    a checkpoint can hold it.
    """

    def __init__(self, size: int = 50) -> None:
        if size < 0:
            raise ValueError(f"pool size must be non-negative, got {size}")
        self.size = int(size)
        self.images: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return a batch like ``images`` (detached) mixing them with stored ones, and update the store."""
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for img in images:
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
                continue
            if float(torch.rand((), generator=generator, device=generator.device)) > 0.5:
                idx = int(torch.randint(len(self.images), (), generator=generator, device=generator.device))
                out.append(self.images[idx].clone())
                self.images[idx] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"images": torch.stack(self.images)} if self.images else {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        stored = state.get("images")
        self.images = [] if stored is None else [t.clone() for t in stored]
        if len(self.images) > self.size:
            raise ValueError(f"pool state holds {len(self.images)} images, more than its size {self.size}")


# -- the step ---------------------------------------------------------------------------------------------
@dataclass
class GANBatch:
    """One draw of the user's ``sample``: the real images and what G and D get besides.

    ``g_input`` is passed to G as one argument, or unpacked if a tuple (positional) or dict
    (keywords); ``d_cond`` are extra positional arguments of D after the image (class labels,
    a pix2pix source image); ``extra`` is for the extra-loss hooks (masks, target classes).
    """

    real: torch.Tensor
    g_input: Any
    d_cond: tuple = ()
    extra: dict = field(default_factory=dict)


Terms = dict[str, torch.Tensor]


def _call(fn: Callable[..., Any], arg: Any) -> Any:
    if isinstance(arg, tuple):
        return fn(*arg)
    if isinstance(arg, Mapping):
        return fn(**arg)
    return fn(arg)


def _detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, Mapping):
        return {k: _detach(v) for k, v in x.items()}
    return x


def _adv(out: Any) -> torch.Tensor:
    """The adversarial logits of a discriminator output (the first element when D has extra heads)."""
    return out if isinstance(out, torch.Tensor) else out[0]


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients for ``module`` (its input still gets them): the G step through D."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


class GANStep:
    """One Trainer step of a GAN (manual optimisation): ``n_critic`` D updates, then one G update.

    ``sample(ctx) -> GANBatch`` (or ``(real, g_input)``) draws a real batch and G's inputs from
    ``ctx.generator``; it is called once per D update (WGAN-GP Alg. 1 draws fresh data for each
    critic iteration). The G update reuses the last D update's batch and fake (``g_batch =
    "reuse"``, the DCGAN/CycleGAN order: one batch per iteration) or draws a new one
    (``"fresh"``, WGAN-GP Alg. 1 line 11); the default is "reuse" for ``n_critic == 1``, else
    "fresh".

    D loss = adversarial + ``gp_weight`` · :func:`gradient_penalty` (default 10 for
    ``"wgan-gp"``, else 0) + (γ/2)·k · :func:`r1_penalty` on every k-th D update
    (``r1_gamma`` = γ, ``r1_every`` = k) + ``d_extra`` terms; fakes pass through ``pool``
    (an :class:`ImagePool` or its size) on their way to D. G loss = adversarial + ``g_extra``
    terms. ``d_extra(ctx, batch, real_out, fake_out)`` and ``g_extra(ctx, batch, fake,
    fake_out)`` return dicts of scalar terms (classification, cycle, L1 ...); D may return a
    tuple whose first element is the adversarial logit. Every term is logged as ``d/<name>``
    or ``g/<name>``, the sums as ``d_loss`` and ``g_loss``.

    Use: as a Trainer ``step_fn`` (``manual_optimization=True``, optimisers named ``g_name`` and
    ``d_name``), from a plugin's ``training_step`` as ``gan(StepContext(step, 0, generator,
    self.trainer))``, or through :class:`GANTrainer`.
    """

    def __init__(self, G: nn.Module, D: nn.Module, sample: Callable[[StepContext], GANBatch | tuple], *,
                 loss: GANLoss | tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = "nonsaturating",
                 n_critic: int = 1, gp_weight: float | None = None, r1_gamma: float = 0.0, r1_every: int = 1,
                 pool: ImagePool | int | None = None, g_batch: Literal["reuse", "fresh"] | None = None,
                 d_extra: Callable[..., Terms] | None = None, g_extra: Callable[..., Terms] | None = None,
                 g_name: str = "G", d_name: str = "D") -> None:
        if isinstance(loss, str):
            if loss not in GAN_LOSSES:
                raise ValueError(f"unknown GAN loss {loss!r}; choose one of {sorted(GAN_LOSSES)}")
            self.d_loss_fn, self.g_loss_fn, default_gp = GAN_LOSSES[loss]
        else:
            (self.d_loss_fn, self.g_loss_fn), default_gp = loss, 0.0
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if r1_gamma < 0 or r1_every < 1:
            raise ValueError(f"need r1_gamma >= 0 and r1_every >= 1, got {r1_gamma}, {r1_every}")
        if g_batch not in (None, "reuse", "fresh"):
            raise ValueError(f"g_batch must be 'reuse' or 'fresh', got {g_batch!r}")
        self.G, self.D, self.sample = G, D, sample
        self.loss_name = loss if isinstance(loss, str) else "custom"
        self.n_critic = int(n_critic)
        self.gp_weight = float(default_gp if gp_weight is None else gp_weight)
        self.r1_gamma, self.r1_every = float(r1_gamma), int(r1_every)
        self.pool = pool if isinstance(pool, ImagePool) else ImagePool(int(pool or 0))
        self.g_batch = g_batch or ("reuse" if self.n_critic == 1 else "fresh")
        self.d_extra, self.g_extra = d_extra, g_extra
        self.g_name, self.d_name = g_name, d_name

    def config(self) -> dict[str, Any]:
        """What a checkpoint's ``meta`` records, so a resume with another GAN set-up is refused."""
        return {"loss": self.loss_name, "n_critic": self.n_critic, "gp_weight": self.gp_weight,
                "r1_gamma": self.r1_gamma, "r1_every": self.r1_every, "pool": self.pool.size, "g_batch": self.g_batch}

    # -- hooks (override for several networks) --------------------------------------------------------
    def draw(self, ctx: StepContext) -> GANBatch:
        b = self.sample(ctx)
        return b if isinstance(b, GANBatch) else GANBatch(*b)

    def generate(self, batch: GANBatch) -> Any:
        """The fake(s) for this batch: ``G(g_input)``."""
        return _call(self.G, batch.g_input)

    def discriminate(self, x: torch.Tensor, batch: GANBatch) -> Any:
        """D's output on images ``x`` (with the batch's conditioning)."""
        return self.D(x, *batch.d_cond)

    def d_terms(self, ctx: StepContext, batch: GANBatch, fake: Any, d_index: int) -> Terms:
        """The discriminator's loss terms on a real batch and a detached fake (summed by the caller)."""
        lazy_r1 = self.r1_gamma > 0 and d_index % self.r1_every == 0
        real = batch.real.detach().requires_grad_(True) if lazy_r1 else batch.real
        shown = self.pool.query(fake, ctx.generator)
        real_out = self.discriminate(real, batch)
        fake_out = self.discriminate(shown, batch)
        terms = {"adv": self.d_loss_fn(_adv(real_out), _adv(fake_out))}
        if self.gp_weight:
            terms["gp"] = self.gp_weight * gradient_penalty(lambda x: _adv(self.discriminate(x, batch)),
                                                            batch.real, shown, ctx.generator)
        if lazy_r1:
            terms["r1"] = 0.5 * self.r1_gamma * self.r1_every * r1_penalty(_adv(real_out), real)
        if self.d_extra is not None:
            terms.update(self.d_extra(ctx, batch, real_out, fake_out))
        return terms

    def g_terms(self, ctx: StepContext, batch: GANBatch, fake: Any) -> Terms:
        """The generator's loss terms (D's parameters are frozen while this runs)."""
        fake_out = self.discriminate(fake, batch)
        terms = {"adv": self.g_loss_fn(_adv(fake_out))}
        if self.g_extra is not None:
            terms.update(self.g_extra(ctx, batch, fake, fake_out))
        return terms

    # -- the alternation ----------------------------------------------------------------------------
    def __call__(self, ctx: StepContext) -> dict[str, float]:
        rows: list[dict[str, float]] = []
        batch, fake = None, None
        for i in range(self.n_critic):
            batch = self.draw(ctx)
            keep_graph = self.g_batch == "reuse" and i == self.n_critic - 1
            with contextlib.nullcontext() if keep_graph else torch.no_grad():
                fake = self.generate(batch)
            terms = self.d_terms(ctx, batch, _detach(fake), ctx.step * self.n_critic + i)
            rows.append(self._update(ctx, self.d_name, terms, "d"))
        if self.g_batch == "fresh":
            batch = self.draw(ctx)
            fake = self.generate(batch)
        with _frozen(self.D):
            terms = self.g_terms(ctx, batch, fake)
            row = self._update(ctx, self.g_name, terms, "g")
        keys = dict.fromkeys(k for r in rows for k in r)  # a lazy R1 term is in some rows only
        out = {k: math.fsum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}
        out.update(row)
        return out

    @staticmethod
    def _update(ctx: StepContext, name: str, terms: Terms, tag: str) -> dict[str, float]:
        total = sum(terms.values())
        ctx.zero_grad(name)
        ctx.backward(total)
        ctx.optimizer_step(name)
        row = {f"{tag}/{k}": float(v.detach()) for k, v in terms.items()}
        row[f"{tag}_loss"] = float(total.detach())
        return row


# -- the run ----------------------------------------------------------------------------------------------
POOL_FILE = "image_pool.safetensors"
GAN_WEIGHTS_FILE = "gan.safetensors"


def default_optimizer(module: nn.Module, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999)) -> torch.optim.Adam:
    """Adam(lr = 2e-4, β = (0.5, 0.999)) — DCGAN's (Radford et al. 2016), also pix2pix's and CycleGAN's."""
    return torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr, betas=betas)


class GANTrainer:
    """A :class:`GANStep` run on :class:`Trainer` (modules ``"G"``/``"D"`` unless the step names others).

    ``ema_decay`` keeps an EMA of G (the Trainer's ``ema=``) that replaces G's weights when the
    run ends (spectral-norm vectors are then refreshed, :func:`refresh_spectral_norm`).
    Checkpoints come from the Trainer; G's and D's weights go to ``gan.safetensors`` unless
    ``save_weights`` / ``load_weights`` are given, the image pool always to
    ``image_pool.safetensors``, so ``fit(resume_from=...)`` equals an uninterrupted run.
    """

    def __init__(self, gan: GANStep, *, steps: int, generator: torch.Generator,
                 g_optimizer: torch.optim.Optimizer | None = None, d_optimizer: torch.optim.Optimizer | None = None,
                 schedulers: Mapping[str, Any] | None = None, ema_decay: float | None = None,
                 clip_grad_norm: float | None = None, mixed_precision: MixedPrecision = "no",
                 device: torch.device | str | None = None, checkpoint_every: int = 0,
                 checkpoint_dir: str | Path | None = None, save_weights: Callable[[Path], Any] | None = None,
                 load_weights: Callable[[Path], Any] | None = None, meta: Mapping[str, Any] | None = None,
                 progress: bool | Progress = False, desc: str = "gan") -> None:
        if (save_weights is None) != (load_weights is None):
            raise ValueError("give both save_weights and load_weights, or neither")
        self.gan = gan
        self._save_user, self._load_user = save_weights, load_weights
        g, d = gan.g_name, gan.d_name
        self.trainer = Trainer(
            {g: gan.G, d: gan.D},
            {g: g_optimizer or default_optimizer(gan.G), d: d_optimizer or default_optimizer(gan.D)},
            gan, steps=steps, generator=generator, schedulers=schedulers, manual_optimization=True,
            clip_grad_norm=clip_grad_norm, ema={g: ema_decay} if ema_decay is not None else None,
            apply_ema=ema_decay is not None, mixed_precision=mixed_precision, device=device,
            checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir, save_weights=self._save,
            load_weights=self._load, meta={**dict(meta or {}), "gan": gan.config()}, progress=progress, desc=desc)

    @property
    def history(self) -> list[dict]:
        return self.trainer.history

    def fit(self, resume_from: str | Path | None = None) -> list[dict]:
        """Train (from ``resume_from``'s step if given); G holds its EMA afterwards if ``ema_decay``."""
        history = self.trainer.fit(resume_from)
        if self.trainer.apply_ema:
            refresh_spectral_norm(self.gan.G)
        return history

    def _save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        if self._save_user is not None:
            self._save_user(directory)
        else:
            tensors = {f"{k}.{n}": t.detach().cpu().contiguous() for k, m in self.trainer.modules.items()
                       for n, t in m.state_dict().items()}
            save_file(tensors, str(directory / GAN_WEIGHTS_FILE))
        pool = self.gan.pool.state_dict()
        if pool:
            save_file({k: v.detach().cpu().contiguous() for k, v in pool.items()}, str(directory / POOL_FILE))

    def _load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        if self._load_user is not None:
            self._load_user(directory)
        else:
            tensors = load_file(str(directory / GAN_WEIGHTS_FILE))
            for k, m in self.trainer.modules.items():
                m.load_state_dict({n[len(k) + 1:]: t for n, t in tensors.items() if n.startswith(k + ".")})
        pool_path = directory / POOL_FILE
        device = next(iter(self.gan.G.parameters())).device
        self.gan.pool.load_state_dict({k: v.to(device) for k, v in load_file(str(pool_path)).items()}
                                      if pool_path.is_file() else {})
