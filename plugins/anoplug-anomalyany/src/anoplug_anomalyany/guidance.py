"""AnomalyAny's test-time optimisation, as hooks of the shared sampling loop (official code, spec §5).

- :func:`pre_optimise_prompt` — step 1, before the loop: the anomaly token's embedding (both CFG
  halves) is moved so that its shift from the normal prompt points along the normal → detailed
  shift (20 gradient steps of size 0.1 on ``1 − cos``).
- :class:`InnerOptimisation` — step 2, at every denoising step: 10 iterations, each one
  conditional UNet pass with gradients; ``L = 0.1·L_clip + 0.5·(i/T′)·L_att`` moves the latent
  (step ``2·s_i``, ``s_i = max(1e-4, 0.02 − 1e-4·i)``) and ``L + 1 − cos(prompt, detailed)`` moves
  both halves of the prompt embeddings (step ``s_i``). ``L_clip`` only after ``0.7·T′``.
- :func:`refinement_hooks` — step 3, early steps: Attend-and-Excite's iterative refinement
  (5 steps of ``λ·√(r_i/10)``) and one step of ``λ·√r_i`` on ``L_att``, only at the threshold steps,
  before ``i < 10``, while the token's map has not localised (``10 < n < 50`` of 256 pixels turns it
  off), and when ``L_att > 1 − threshold``. These are :class:`~anoplug.diffusion.sampling.LatentOptimization`
  hooks of the toolkit.

All losses are per sample and summed, so a sample's gradients do not depend on its batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from anoplug.diffusion.sampling import ClassifierFreeGuidance, Hook, LatentOptimization, Probe, SamplingContext
from anoplug_anomalyany.attention_maps import attention_loss, binarise_at_mean, token_maps

__all__ = ["pre_optimise_prompt", "shift_cosine", "GuidanceState", "InnerOptimisation", "refinement_hooks",
           "Schedule", "gather_tokens", "scatter_tokens"]


def gather_tokens(emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``emb[b, idx[b, k]]`` → ``[B, K, D]``."""
    return emb.gather(1, idx[..., None].expand(-1, -1, emb.shape[-1]))


def scatter_tokens(emb: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``emb`` with rows ``idx[b, k]`` replaced by ``values[b, k]``."""
    return emb.scatter(1, idx[..., None].expand(-1, -1, emb.shape[-1]), values)


def shift_cosine(delta_1: torch.Tensor, delta_2: torch.Tensor, kmask: torch.Tensor,
                 axis: Literal["features", "tokens"]) -> torch.Tensor:
    """``[B]`` cosine between the anomaly-token shift ``delta_1 [B,K,D]`` and the prompt shift ``delta_2 [B,L,D]``.

    ``"tokens"`` is the official call literally: ``nn.CosineSimilarity()`` (dim 1, the token axis)
    of the token shift broadcast over the L positions against the per-position shift, averaged.
    For a one-token word that cosine is ``sign(a)·const`` per feature, so its gradient vanishes
    (about 1e-8): the official pre-update leaves the embedding where it is. ``"features"`` is the
    objective as the spec describes it: the cosine over the feature axis between the token shift
    and the mean (over positions) prompt shift.
    """
    if axis == "tokens":
        per_k = torch.stack([F.cosine_similarity(delta_1[:, k:k + 1].expand_as(delta_2), delta_2, dim=1).mean(-1)
                             for k in range(delta_1.shape[1])], 1)  # [B, K]
    else:
        per_k = F.cosine_similarity(delta_1, delta_2.mean(1, keepdim=True).expand_as(delta_1), dim=-1)
    w = kmask.float()
    return (per_k * w).sum(1) / w.sum(1)


def pre_optimise_prompt(cond: torch.Tensor, uncond: torch.Tensor, normal: tuple[torch.Tensor, torch.Tensor],
                        detailed: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor, kmask: torch.Tensor, *,
                        steps: int = 20, lr: float = 0.1, axis: Literal["features", "tokens"] = "features"
                        ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Step 1: move the anomaly token rows of both CFG halves; returns ``(cond, uncond, cos per step)``.

    ``normal`` and ``detailed`` are ``(cond, uncond)`` embeddings of those prompts. Shifts are
    means over the two CFG halves, as the official code averages its batch of ``[uncond; cond]``.
    """
    n_idx = torch.stack([gather_tokens(normal[1], idx), gather_tokens(normal[0], idx)], 1).mean(1)  # [B,K,D]
    delta_2 = torch.stack([detailed[1], detailed[0]], 1).mean(1) - torch.stack([normal[1], normal[0]], 1).mean(1)
    p = torch.stack([gather_tokens(uncond, idx), gather_tokens(cond, idx)], 1)  # [B, 2, K, D]
    history = []
    for _ in range(steps):
        with torch.enable_grad():
            p = p.detach().requires_grad_(True)
            cos = shift_cosine(p.mean(1) - n_idx, delta_2, kmask, axis)
            (g,) = torch.autograd.grad((1.0 - cos).sum(), p)
        history.append(cos.detach())
        p = p.detach() - lr * g
    return scatter_tokens(cond, idx, p[:, 1]), scatter_tokens(uncond, idx, p[:, 0]), history


@dataclass
class Schedule:
    """The official step-count constants, written as fractions of T′ (the steps that run) where they count steps."""

    run_steps: int  # T′ = ⌊N·γ⌋
    scale_range: torch.Tensor  # linspace(1.0, 0.5, len(full schedule)), indexed by the truncated step i (official)
    latent_step: float = 0.02
    latent_step_decay: float = 1e-4
    latent_step_min: float = 1e-4
    clip_from: float = 0.7
    clip_weight: float = 0.1
    attention_weight: float = 0.5
    threshold_steps: tuple[int, ...] = (0, 10, 20)
    thresholds: tuple[float, ...] = (0.05, 0.5, 0.8)
    localize_until: int = 10
    max_iter_to_alter: int = 25
    band: tuple[float, float] = (10.0, 50.0)  # pixels of the binarised map that count as "localised"
    scale_factor: float = 50.0

    def s(self, i: int) -> float:
        """``s_i = max(1e-4, 0.02 − 1e-4·i)``: the prompt's step; the latent takes twice that."""
        return max(self.latent_step_min, self.latent_step - self.latent_step_decay * i)

    def threshold(self, i: int) -> float | None:
        return dict(zip(self.threshold_steps, self.thresholds)).get(i)


@dataclass
class GuidanceState:
    """What the hooks of one run share: token positions, the localisation flags, the trace for inspection."""

    indices: torch.Tensor  # [B, K] anomaly token positions
    res: int = 16
    smooth: bool = True
    sigma: float = 0.5
    kernel_size: int = 3
    localize: torch.Tensor | None = None  # [B] bool: the extra A&E updates still on
    n_start: torch.Tensor | None = None
    refine: torch.Tensor | None = None  # [B] bool: this step's A&E refinement applies
    trace: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in (
        "i", "peak_in", "peak_out", "loss_att", "loss_clip", "prompt_cos", "n", "refine")})

    def maps(self, attention: dict[str, torch.Tensor]) -> torch.Tensor:
        return token_maps(attention, self.indices, self.res, smooth=self.smooth, sigma=self.sigma,
                          kernel_size=self.kernel_size)


def _prompt_cosine(cond: torch.Tensor, uncond: torch.Tensor, d_cond: torch.Tensor, d_uncond: torch.Tensor) -> torch.Tensor:
    """``[B]``: the official ``CosineSimilarity()(prompt_embeds, detailed_embeds).mean()`` per sample (dim 1 = tokens)."""
    a = torch.stack([uncond, cond], 1)
    b = torch.stack([d_uncond, d_cond], 1)
    return F.cosine_similarity(a, b, dim=2).mean((1, 2))


@dataclass(eq=False)
class InnerOptimisation(Hook):
    """Step 2 of §5: before each prediction, 10 joint updates of the latent and the prompt embeddings.

    Reads and writes ``ctx.cond`` (the conditional embeddings) and ``cfg.uncond``, so the step's
    guided prediction uses the optimised prompt, as in the original. Needs a
    :class:`~anoplug.diffusion.sampling.CaptureCrossAttention` hook in the run (it fills
    ``ctx.attention`` with the conditional maps, gradients kept). ``decode`` maps a latent to an
    image in [0, 1] (with gradients) for the CLIP loss; ``clip_distance(images) -> [B]``.
    """

    state: GuidanceState
    schedule: Schedule
    cfg: ClassifierFreeGuidance
    detailed: tuple[torch.Tensor, torch.Tensor]  # (cond, uncond) embeddings of the detailed prompt
    decode: Callable[[torch.Tensor], torch.Tensor]
    clip_distance: Callable[[torch.Tensor], torch.Tensor] | None = None
    iterations: int = 10
    update_prompt: bool = True

    def start(self, ctx: SamplingContext) -> None:
        n = len(ctx.rngs)
        self.state.localize = torch.ones(n, dtype=torch.bool, device=ctx.device)
        self.state.n_start = None
        self.state.refine = torch.zeros(n, dtype=torch.bool, device=ctx.device)

    def before_step(self, ctx: SamplingContext, x: torch.Tensor) -> torch.Tensor:
        st, sc, i = self.state, self.schedule, ctx.i
        s_i = sc.s(i)
        use_clip = self.clip_distance is not None and i > sc.clip_from * sc.run_steps
        cond, uncond = ctx.cond.detach(), self.cfg.uncond.detach()
        d_cond, d_uncond = self.detailed
        l_att = torch.zeros(len(x), device=x.device)  # with no inner iteration nothing gates step 3 on
        with torch.enable_grad():
            for q in range(self.iterations):
                x = x.detach().requires_grad_(True)
                cond = cond.detach().requires_grad_(self.update_prompt)
                uncond = uncond.detach().requires_grad_(self.update_prompt)
                # L_clip: CLIP distance of the decoded latent x_t to the detailed prompt (late steps only)
                l_clip = self.clip_distance(self.decode(x)) if use_clip else torch.zeros(len(x), device=x.device)
                # L_att: one conditional pass with gradients; the token map's peak
                ctx.forward(ctx.scheduler.scale_model_input(x, ctx.t), cond, "cond")
                maps = st.maps(ctx.attention)
                l_att, peak = attention_loss(maps)
                # localisation: the map binarised at its mean; 10 < n < 50 switches the extra updates off
                n = binarise_at_mean(maps.detach()).flatten(1).sum(-1)
                if i == 0:
                    st.n_start = n
                st.localize = st.localize & ~((n > sc.band[0]) & (n < sc.band[1]))
                loss = sc.clip_weight * l_clip + sc.attention_weight * (i / sc.run_steps) * l_att
                cos = _prompt_cosine(cond, uncond, d_cond, d_uncond)
                # one backward through the UNet: ∇(L + 1 − cos) = ∇L + ∇(1 − cos), and cos needs no UNet
                wrt = [x, cond] if self.update_prompt else [x]
                grads = torch.autograd.grad(loss.sum(), wrt, allow_unused=True)
                gx = grads[0]
                if self.update_prompt:
                    gc_cos, gu_cos = torch.autograd.grad((1.0 - cos).sum(), [cond, uncond])
                    gc = gc_cos if grads[1] is None else grads[1] + gc_cos
                    cond = cond.detach() - s_i * gc  # L does not reach the unconditional half
                    uncond = uncond.detach() - s_i * gu_cos
                if gx is not None:
                    x = x.detach() - 2 * s_i * gx
                self._record(i, q, peak, l_att, l_clip, cos, n)
        ctx.attention.clear()
        ctx.cond, self.cfg.uncond = cond.detach(), uncond.detach()
        # step 3's gate: threshold step, early enough, not localised, and the token still under-attended
        thr = sc.threshold(i)
        st.refine = st.localize & (i < sc.localize_until) & (thr is not None) & (
            l_att.detach() > 1.0 - (thr if thr is not None else 1.0))
        st.trace["refine"].append(st.refine.clone())
        return x.detach()

    def _record(self, i: int, q: int, peak: torch.Tensor, l_att: torch.Tensor, l_clip: torch.Tensor,
                cos: torch.Tensor, n: torch.Tensor) -> None:
        t = self.state.trace
        if q == 0:
            t["i"].append(i)
            t["peak_in"].append(peak.detach().amin(-1))
            for k in ("loss_att", "loss_clip", "prompt_cos", "n"):
                t[k].append([])
        t["loss_att"][-1].append(l_att.detach())
        t["loss_clip"][-1].append(l_clip.detach())
        t["prompt_cos"][-1].append(cos.detach())
        t["n"][-1].append(n)


def refinement_hooks(state: GuidanceState, schedule: Schedule, iterations: int = 5) -> list[LatentOptimization]:
    """Step 3 of §5: Attend-and-Excite's refinement, then one larger step, on the samples ``state.refine`` selects.

    Both are the toolkit's :class:`LatentOptimization` (a conditional pass with gradients, then
    ``x ← x − size·∇x``); a sample that is not selected gets a zero gradient.
    """
    def objective(probe: Probe) -> torch.Tensor:
        loss, _ = attention_loss(state.maps(probe.attention))
        return (loss * state.refine.float()).sum()

    def size(div: float) -> Callable[[int, int], float]:
        return lambda i, n: schedule.scale_factor * math.sqrt(float(schedule.scale_range[i]) / div)

    def gate(extra: Callable[[int], bool]) -> Callable[[int, int], bool]:
        return lambda i, n: bool(state.refine is not None and state.refine.any()) and extra(i)

    refine = LatentOptimization(objective, iterations=iterations, step_size=size(10.0), active=gate(lambda i: True))
    final = LatentOptimization(objective, iterations=1, step_size=size(1.0),
                               active=gate(lambda i: i < schedule.max_iter_to_alter))
    return [refine, final]
