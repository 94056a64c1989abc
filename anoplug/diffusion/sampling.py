"""One denoising loop with composable per-step hooks.

The diffusion methods here all run the same reverse process, x_T → … → x_0 with a
diffusers scheduler. They differ in what they do around each step: blend a known
background back in, guide against an empty prompt, capture or re-weight cross-attention,
optimise the latent with gradients. :func:`sample` is that loop. Each mechanism is a small
:class:`Hook`, so a method is a list of hooks and each hook can be tested on its own.

One step of :func:`sample`, with the hooks that act there:

1. ``before_step``: :class:`BlendBefore` resets the background to q(z0, t);
   :class:`LatentOptimization` takes gradient steps on x_t;
2. the model call: at most one guiding hook (:class:`ClassifierFreeGuidance`) decides the
   passes. Every pass is announced to ``before_model`` / ``after_model``, where
   :class:`ReweightCrossAttention` sets its weights and :class:`CaptureCrossAttention`
   collects the maps of the conditional half;
3. ``on_prediction``: sees x_t and ε (hence x̂0): :class:`PixelX0Blend`;
4. the scheduler step x_t → x_{t−1};
5. ``after_step``: :class:`BlendAfter`.

After the loop, ``decode`` (if given) turns the latent into the output, and the ``finish``
hooks run on it: :class:`FinalComposite`, then :class:`ExactPaste`.

The blending hooks are the variants of spec §2.1, for a mask ``m`` (1 = generate) and the clean
latent ``z0`` of the normal image. No sampler reproduces the background exactly, which is why
:class:`ExactPaste` exists.

Every random draw comes from the sample's own ``torch.Generator``: the start noise, the noise
of q(z0, t) and the scheduler's variance noise. A sample therefore does not depend on the batch
it is in. The loop runs without gradients. Only :class:`LatentOptimization` turns them on, for
the latent alone; the model's weights stay frozen through ``requires_grad_(False)``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from anoplug.diffusion.attention import AnoplugAttnProcessor, AttentionState, attention_processors
from anoplug.diffusion.blend import per_sample_randn, predicted_x0, resize_mask, step_index
from anoplug.ops import gaussian_blur

__all__ = ["Model", "MaskSpec", "Branch", "SamplingContext", "Hook", "sample", "BlendBefore", "BlendAfter",
           "PixelX0Blend", "FinalComposite", "ExactPaste", "ClassifierFreeGuidance", "CaptureCrossAttention",
           "ReweightCrossAttention", "Probe", "LatentOptimization"]

#: ``model(x_t, t, cond) -> ε``: the noise prediction for a batch at timestep ``t`` under conditioning ``cond``.
Model = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
#: A mask ``[B,1,h,w]`` (1 = generate), or ``(i, t) -> mask`` for a mask that changes per step.
MaskSpec = torch.Tensor | Callable[[int, int], torch.Tensor]
#: Which half of classifier-free guidance a model pass computes; ``"both"`` is ``[uncond; cond]`` in one batch.
Branch = Literal["cond", "uncond", "both"]
LayerSelection = Sequence[str] | Callable[[str], bool] | None


@dataclass(eq=False)
class SamplingContext:
    """What every hook sees: the run's fixed parts and the current step, plus one way to call the model."""

    model: Model
    scheduler: Any
    cond: Any
    rngs: Sequence[torch.Generator]
    timesteps: torch.Tensor
    hooks: Sequence[Hook]
    device: torch.device
    latent_size: tuple[int, int]
    #: index of the current step (0 = the noisiest) and its timestep.
    i: int = 0
    t: torch.Tensor | None = None
    #: cross-attention maps of the latest conditional pass, ``layer -> [B, pixels, tokens]`` (see CaptureCrossAttention).
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _processors: dict[int, tuple[AttentionState, dict[str, AnoplugAttnProcessor]]] = field(default_factory=dict, repr=False)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def noise(self, shape: Sequence[int]) -> torch.Tensor:
        """Fresh standard normal noise ``[B, *shape]``, each row from its sample's generator."""
        return per_sample_randn(shape, self.rngs, self.device)

    def forward(self, x: torch.Tensor, cond: Any, branch: Branch = "cond") -> torch.Tensor:
        """One model pass at the current step. Hooks hear of it, so they can set their state per branch."""
        for h in self.hooks:
            h.before_model(self, x, branch)
        eps = self.model(x, self.t, cond)
        for h in self.hooks:
            h.after_model(self, branch)
        return eps

    def attention_processors(self, unet: Any) -> tuple[AttentionState, dict[str, AnoplugAttnProcessor]]:
        """The anoplug processors on ``unet``'s cross-attention layers, with their shared state.

        They are installed once per run, whatever the number of attention hooks, and the
        originals come back when the run ends. They start inactive (no capture, no
        re-weighting); each hook switches on its own layers.
        """
        if id(unet) not in self._processors:
            state = self._stack.enter_context(attention_processors(
                unet, AttentionState(latent_size=self.latent_size), capture=[], reweight=[]))
            procs = {n: p for n, p in unet.attn_processors.items() if isinstance(p, AnoplugAttnProcessor)}
            self._processors[id(unet)] = (state, procs)
        return self._processors[id(unet)]


class Hook:
    """Base of every hook; each method does nothing unless a hook overrides it.

    The hooks run in list order at each point of the step. A hook with ``guides = True``
    replaces the plain conditional model call with :meth:`guide`, and a run may have at
    most one such hook.
    """

    guides: ClassVar[bool] = False

    def start(self, ctx: SamplingContext) -> None:
        """Once, before the first step (install processors, reset records)."""

    def before_step(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        """``x`` is x_t before the prediction; return the x_t to predict from."""
        return x

    def guide(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        """ε for the model input ``x`` from one or more :meth:`SamplingContext.forward` passes."""
        raise NotImplementedError

    def before_model(self, ctx: SamplingContext, x: torch.Tensor, branch: Branch) -> None:
        """Just before one model pass on ``x`` (``[uncond; cond]`` stacked when ``branch == "both"``)."""

    def after_model(self, ctx: SamplingContext, branch: Branch) -> None:
        """Just after that pass."""

    def on_prediction(self, ctx: SamplingContext, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's latent and its final ε, before the scheduler step; may change either."""
        return x, eps

    def after_step(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        """``x`` is x_{t−1}; ``ctx.t`` is still the step's t."""
        return x

    def finish(self, ctx: SamplingContext, out: torch.Tensor) -> torch.Tensor:
        """After the loop, on the output (the decoded image when ``sample`` got ``decode``)."""
        return out


def sample(model: Model, scheduler: Any, x_T: torch.Tensor | None = None, *, shape: Sequence[int] | None = None,
           rngs: Sequence[torch.Generator], num_steps: int, eta: float = 0.0, cond: Any = None,
           hooks: Sequence[Hook] = (), decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
           device: torch.device | str | None = None) -> torch.Tensor:
    """Run the reverse process from ``x_T`` (or fresh noise of ``shape``) through ``num_steps`` scheduler steps.

    ``model(x, t, cond)`` returns ε. ``rngs`` holds one generator per sample and is the source
    of every random draw. ``eta`` goes to schedulers that take it (DDIM). Returns the final
    latent, or ``decode(latent)`` when ``decode`` is given; the ``finish`` hooks run on that
    value in both cases. ``device`` places fresh start noise (``x_T`` stays where it is).
    """
    if (x_T is None) == (shape is None):
        raise ValueError("give either x_T or shape")
    batch = len(x_T) if x_T is not None else int(shape[0])
    if len(rngs) != batch:
        raise ValueError(f"need one generator per sample: {len(rngs)} for {batch}")
    guides = [h for h in hooks if h.guides]
    if len(guides) > 1:
        raise ValueError(f"at most one guiding hook per run, got {[type(h).__name__ for h in guides]}")
    device = x_T.device if x_T is not None else torch.device(device or "cpu")
    scheduler.set_timesteps(num_steps, device=device)
    # only what this scheduler's step takes: DDIM takes eta, PNDM (SD's default) neither eta nor a
    # generator (it adds no noise); passing either to it is a TypeError
    accepted = inspect.signature(scheduler.step).parameters
    step_kw = {"eta": eta} if "eta" in accepted else {}
    if "generator" in accepted:
        step_kw["generator"] = list(rngs)

    # 0. the start noise, each row from its own generator
    x = x_T.clone() if x_T is not None else per_sample_randn(shape[1:], rngs, device) * scheduler.init_noise_sigma
    ctx = SamplingContext(model=model, scheduler=scheduler, cond=cond, rngs=rngs, timesteps=scheduler.timesteps,
                          hooks=hooks, device=device, latent_size=(int(x.shape[-2]), int(x.shape[-1])))
    with torch.no_grad(), ctx._stack:
        for h in hooks:
            h.start(ctx)
        for i, t in enumerate(ctx.timesteps):
            ctx.i, ctx.t = i, t
            # 1. before the step: blend the background in, optimise the latent
            for h in hooks:
                x = h.before_step(ctx, x)
            # 2. the prediction: the guiding hook's passes, else one conditional pass
            x_in = scheduler.scale_model_input(x, t)
            eps = guides[0].guide(ctx, x_in) if guides else ctx.forward(x_in, cond, "cond")
            # 3. hooks on the prediction (pixel-space x̂0 blend)
            for h in hooks:
                x, eps = h.on_prediction(ctx, x, eps)
            # 4. the scheduler step x_t → x_{t−1}; variance noise from each sample's generator
            x = scheduler.step(eps, t, x, **step_kw).prev_sample
            # 5. after the step: blend the background in at level t
            for h in hooks:
                x = h.after_step(ctx, x)
        # 6. the output: decode, then the finishing hooks (composite, exact paste)
        out = decode(x) if decode is not None else x
        for h in hooks:
            out = h.finish(ctx, out)
    return out


def _mask_at(mask: MaskSpec, ctx: SamplingContext, size: Sequence[int]) -> torch.Tensor:
    m = mask(ctx.i, int(ctx.t)) if callable(mask) else mask
    return resize_mask(m, tuple(size)).to(ctx.device)


# -- blending (spec §2.1) ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class BlendBefore(Hook):
    """Before each step ``x_t ← m·x_t + (1−m)·q(z0, t)`` with fresh noise (AnomalyDiffusion, AnoGen, AdaBLDM's latents).

    The model then sees a background at the right noise level, so the region it generates matches that background.
    """

    z0: torch.Tensor
    mask: MaskSpec

    def before_step(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        m = _mask_at(self.mask, ctx, self.z0.shape[-2:])
        bg = ctx.scheduler.add_noise(self.z0, ctx.noise(self.z0.shape[1:]), ctx.t.reshape(1))
        return m * x + (1 - m) * bg


@dataclass(eq=False)
class BlendAfter(Hook):
    """After each step ``x_{t−1} ← m·x_{t−1} + (1−m)·q(z0, t)`` (AnomalyAny).

    The noise level is ``t``, not ``t−1``. The original has this off-by-one, and it is kept on purpose.
    """

    z0: torch.Tensor
    mask: MaskSpec

    def after_step(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        m = _mask_at(self.mask, ctx, self.z0.shape[-2:])
        bg = ctx.scheduler.add_noise(self.z0, ctx.noise(self.z0.shape[1:]), ctx.t.reshape(1))
        return m * x + (1 - m) * bg


@dataclass(eq=False)
class PixelX0Blend(Hook):
    """From step fraction ``from_fraction`` on, paste the source pixels into the decoded x̂0 and continue from it (AdaBLDM).

    The pasted x̂0 is re-encoded, and x_t is rebuilt from it with the same ε. The background is
    thus fixed in pixel space, where the latent blends cannot reach. ``source`` is in [0, 1];
    ``mask`` is at pixel size (1 = generate).
    """

    decode: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[torch.Tensor], torch.Tensor]
    source: torch.Tensor
    mask: MaskSpec
    from_fraction: float = 0.5

    def on_prediction(self, ctx: SamplingContext, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.i < step_index(self.from_fraction, ctx.num_steps):
            return x, eps
        pix = self.decode(predicted_x0(ctx.scheduler, x, eps, ctx.t))
        pm = _mask_at(self.mask, ctx, pix.shape[-2:])
        x0 = self.encode(pm * pix + (1 - pm) * self.source.to(ctx.device))
        a = ctx.scheduler.alphas_cumprod.to(ctx.device)[int(ctx.t)]
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, eps  # the same ε now implies the pasted x̂0


@dataclass(eq=False)
class FinalComposite(Hook):
    """At the end, alpha-composite the output over the source with a Gaussian-blurred mask (σ = 5 px, AnomalyControl).

    Images in [0, 1]. The blur hides the seam that a hard paste would leave.
    """

    source: torch.Tensor
    mask: torch.Tensor
    sigma: float = 5.0

    def finish(self, ctx: SamplingContext, out: torch.Tensor) -> torch.Tensor:
        alpha = gaussian_blur(resize_mask(self.mask, tuple(out.shape[-2:])).to(out.device), self.sigma).clamp(0, 1)
        return alpha * out + (1 - alpha) * self.source.to(out.device)


@dataclass(eq=False)
class ExactPaste(Hook):
    """At the end, take every pixel where ``mask == 0`` from the source, bit for bit.

    No sampler reproduces the background exactly, and this paste guarantees it.
    """

    source: torch.Tensor
    mask: torch.Tensor

    def finish(self, ctx: SamplingContext, out: torch.Tensor) -> torch.Tensor:
        m = resize_mask(self.mask, tuple(out.shape[-2:])).to(out.device)
        return torch.where(m.expand_as(out) > 0.5, out, self.source.to(out.device))


# -- guidance ---------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class ClassifierFreeGuidance(Hook):
    """ε = ε_u + s·(ε_c − ε_u): push the prediction away from the unconditional one.

    ``batched`` runs one pass on ``[uncond; cond]``, as diffusers does. Otherwise it runs two
    passes (conditional, then unconditional); the results are not bit-identical to the batched
    pass.
    """

    uncond: Any
    scale: float
    batched: bool = True
    guides: ClassVar[bool] = True

    def guide(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        if self.batched:
            eps_u, eps_c = ctx.forward(torch.cat([x, x]), torch.cat([self.uncond, ctx.cond]), "both").chunk(2)
        else:
            eps_c = ctx.forward(x, ctx.cond, "cond")
            eps_u = ctx.forward(x, self.uncond, "uncond")
        return eps_u + self.scale * (eps_c - eps_u)


# -- cross-attention (spec §2.3) --------------------------------------------------------------------------------
def _chosen(layers: LayerSelection, names: Sequence[str]) -> list[str]:
    """The selected layers among ``names`` (None = all of them)."""
    if layers is None:
        return list(names)
    if callable(layers):
        return [n for n in names if layers(n)]
    unknown = set(layers) - set(names)
    if unknown:
        raise ValueError(f"not cross-attention layers of this model: {sorted(unknown)}")
    return [n for n in names if n in set(layers)]


@dataclass(eq=False)
class CaptureCrossAttention(Hook):
    """Keep the head-averaged cross-attention maps of chosen layers, from the conditional CFG half (AnomalyAny, SeaS).

    Attention losses must read the conditional half. Each conditional pass puts its maps in
    ``ctx.attention`` for later hooks; gradients are kept there when the pass ran with them.
    ``maps`` holds one detached record per denoising step, ``layer -> [B, pixels, tokens]``.
    """

    unet: Any
    layers: LayerSelection = None
    maps: list[dict[str, torch.Tensor]] = field(default_factory=list, init=False)

    def start(self, ctx: SamplingContext) -> None:
        self._state, procs = ctx.attention_processors(self.unet)
        self._layers = _chosen(self.layers, list(procs))
        if not self._layers:
            raise ValueError("CaptureCrossAttention: no cross-attention layer selected")
        for n in self._layers:
            procs[n].capture = True
        self._state.capture = True
        self.maps = []

    def before_model(self, ctx: SamplingContext, x: torch.Tensor, branch: Branch) -> None:
        for n in self._layers:
            self._state.maps.pop(n, None)

    def after_model(self, ctx: SamplingContext, branch: Branch) -> None:
        missing = [n for n in self._layers if not self._state.maps.get(n)]
        if missing:
            raise RuntimeError(f"CaptureCrossAttention: the model pass did not reach {missing}")
        got = {n: self._state.maps.pop(n)[-1] for n in self._layers}
        if branch == "uncond":
            return
        ctx.attention.update({n: m.chunk(2)[1] if branch == "both" else m for n, m in got.items()})

    def on_prediction(self, ctx: SamplingContext, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.maps.append({n: ctx.attention[n].detach() for n in self._layers})
        return x, eps


@dataclass(eq=False)
class ReweightCrossAttention(Hook):
    """Multiply the logits of the ``tokens`` columns by a per-pixel weight before the softmax (AnomalyDiffusion's ARR).

    ``weight`` is a map ``[B,1,h,w]``, or ``(ctx, x) -> map`` computed per pass from the model
    input. It applies to the conditional half only: the unconditional prompt has no
    placeholder tokens to steer. ``layers`` chooses the cross-attention layers (default: all).
    If it selects none, the processors are still installed, with no effect on the logits.
    """

    unet: Any
    tokens: torch.Tensor
    weight: torch.Tensor | Callable[[SamplingContext, torch.Tensor], torch.Tensor]
    layers: LayerSelection = None

    def start(self, ctx: SamplingContext) -> None:
        self._state, procs = ctx.attention_processors(self.unet)
        self._layers = _chosen(self.layers, list(procs))
        for n in self._layers:
            procs[n].reweight = True
        self._state.tokens = self.tokens

    def before_model(self, ctx: SamplingContext, x: torch.Tensor, branch: Branch) -> None:
        if not self._layers or branch == "uncond":
            self._state.weight = None
            return
        x_cond = x.chunk(2)[1] if branch == "both" else x
        w = self.weight(ctx, x_cond) if callable(self.weight) else self.weight
        if branch == "both":  # [uncond; cond]: weight 1 (unchanged logits) on the unconditional half
            w = w.expand(len(x_cond), *w.shape[1:])
            w = torch.cat([torch.ones_like(w), w])
        self._state.weight = w

    def after_model(self, ctx: SamplingContext, branch: Branch) -> None:
        self._state.weight = None


# -- test-time latent optimisation ------------------------------------------------------------------------------
@dataclass
class Probe:
    """What a :class:`LatentOptimization` objective sees: the latent being optimised and the conditional prediction."""

    i: int
    t: int
    num_steps: int
    x: torch.Tensor
    eps: torch.Tensor
    x0: torch.Tensor
    #: cross-attention maps of this pass (conditional), with gradients; empty without CaptureCrossAttention.
    attention: dict[str, torch.Tensor]


@dataclass(eq=False)
class LatentOptimization(Hook):
    """Before the step's prediction, take gradient steps on x_t that lower ``objective`` (AnomalyAny, Attend-and-Excite).

    Each iteration runs one conditional model pass with gradients, hands the resulting
    :class:`Probe` to ``objective`` (a scalar to lower) and updates
    ``x ← x − step_size·∇x``. Gradients are on inside this hook only, and they are taken
    with respect to the latent alone; freeze the model with ``requires_grad_(False)``
    (``Parts.freeze``). ``step_size`` and ``active`` may depend on ``(i, num_steps)``, so
    step-count constants can be written as fractions. ``losses`` records ``(i, loss)`` for
    every iteration.
    """

    objective: Callable[[Probe], torch.Tensor]
    iterations: int = 1
    step_size: float | Callable[[int, int], float] = 0.02
    active: Callable[[int, int], bool] | None = None
    losses: list[tuple[int, float]] = field(default_factory=list, init=False)

    def start(self, ctx: SamplingContext) -> None:
        self.losses = []

    def before_step(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        if self.active is not None and not self.active(ctx.i, ctx.num_steps):
            return x
        size = self.step_size(ctx.i, ctx.num_steps) if callable(self.step_size) else self.step_size
        with torch.enable_grad():
            for _ in range(self.iterations):
                x = x.detach().requires_grad_(True)
                eps = ctx.forward(ctx.scheduler.scale_model_input(x, ctx.t), ctx.cond, "cond")
                probe = Probe(ctx.i, int(ctx.t), ctx.num_steps, x, eps, predicted_x0(ctx.scheduler, x, eps, ctx.t),
                              dict(ctx.attention))
                loss = self.objective(probe)
                (grad,) = torch.autograd.grad(loss, x)
                self.losses.append((ctx.i, float(loss.detach())))
                x = x.detach() - size * grad
        ctx.attention.clear()  # maps with gradients must not leak into the step's record
        return x.detach()
