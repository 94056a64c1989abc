"""What every fine-tuning mode shares: the noise-prediction loss, batch draws, the run on Trainer.

Each mode (:mod:`.textual_inversion`, :mod:`.lora`, :mod:`.dreambooth`, and the
conditioning modes added next to them) differs only in *which* tensors train and *what*
conditions the UNet; the diffusion objective is the same everywhere, so it is written once
here (:func:`noise_prediction_loss`), as in diffusers' training examples:

1. timesteps ``t ~ U{0, …, T-1}``, one per sample, from the run's seeded generator;
2. noise ``ε ~ N(0, I)``, one draw per sample, from the same generator (on the generator's
   device, so a CPU generator gives the same draws whatever device the model is on);
3. ``x_t = scheduler.add_noise(z0, ε, t)`` (the forward process of the base's schedule);
4. the condition (text embeddings): given, or computed now by a callable, so that draws a
   caller makes for the prompt come after the noise;
5. the target ``ε`` (``prediction_type="epsilon"``) or ``v`` (``"v_prediction"``,
   ``scheduler.get_velocity``), and the MSE between it and the UNet output — optionally under a
   latent mask (both sides multiplied by it, mean over all positions, as AnomalyDiffusion).

The optimisation itself always runs on :class:`anoplug.train.Trainer` (:func:`fit`): seeded,
with accumulation, clipping, mixed precision, checkpoints and exact resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from anoplug.train import StepFn, Trainer

__all__ = ["noise_prediction_loss", "uniform_timesteps", "prediction_target", "heldout_loss", "draw_indices",
           "encode_latents", "encode_prompts", "fit", "save_parameters", "load_parameters", "Condition", "TimestepSampler"]

#: text embeddings ``[B, L, D]``, or a callable computing them after the noise draw.
Condition = torch.Tensor | Callable[[], torch.Tensor]
#: ``timesteps(n, num_train_timesteps, generator) -> [n]`` integer timesteps.
TimestepSampler = Callable[[int, int, torch.Generator], torch.Tensor]

#: diffusers' training examples: AdamW (β 0.9/0.999, ε 1e-8), weight decay 1e-2, gradient norm clipped at 1.
ADAM_WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0


def prediction_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output: ε, or v for a v-prediction schedule."""
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction_type {kind!r} (epsilon or v_prediction)")


def uniform_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """``t ~ U{0, …, T-1}``, the sampling of DDPM and of diffusers' training examples."""
    return torch.randint(0, num_train_timesteps, (n,), generator=generator, device=generator.device)


def noise_prediction_loss(unet: Callable[..., Any], scheduler: Any, latents: torch.Tensor, cond: Condition, *,
                          generator: torch.Generator, mask: torch.Tensor | None = None,
                          reduction: Literal["mean", "none"] = "mean",
                          unet_kwargs: Mapping[str, Any] | None = None,
                          timesteps: TimestepSampler = uniform_timesteps) -> torch.Tensor:
    """The diffusion loss of ``unet`` on clean latents ``[B, C, h, w]`` (steps 1–5 of the module docstring).

    ``unet`` is called as ``unet(x_t, t, encoder_hidden_states=cond, **unet_kwargs)`` and may
    return a diffusers output (``.sample``) or a tensor, so a wrapper that first runs a
    ControlNet or an adapter on ``x_t`` fits too. ``reduction="none"`` gives one loss per sample
    (``[B]``, mean over its positions), which a caller splits (DreamBooth's instance and prior
    halves of one batch); ``"mean"`` is their mean. ``timesteps(n, T, generator)`` replaces the
    uniform draw of step 1 (T2I-Adapter's cubic schedule).
    """
    b = latents.shape[0]
    device = latents.device
    t = timesteps(b, int(scheduler.config.num_train_timesteps), generator).to(device)
    noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(device, latents.dtype)
    x_t = scheduler.add_noise(latents, noise, t)
    hidden = cond() if callable(cond) else cond
    out = unet(x_t, t, encoder_hidden_states=hidden, **dict(unet_kwargs or {}))
    pred = (out.sample if hasattr(out, "sample") else out).float()
    target = prediction_target(scheduler, latents, noise, t).float()
    if mask is not None:
        pred, target = pred * mask, target * mask
    if reduction == "mean":
        return F.mse_loss(pred, target)
    if reduction == "none":
        return (pred - target).pow(2).flatten(1).mean(1)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


@torch.no_grad()
def heldout_loss(unet: nn.Module, scheduler: Any, latents: torch.Tensor, cond: torch.Tensor, *, seed: int = 12345,
                 repeats: int = 4) -> float:
    """The loss on a fixed set of (t, ε) draws that training never sees (its own seeded generator).

    The same number before and after fine-tuning measures learning without the noise of a
    per-step loss curve (each training step draws new timesteps).
    """
    g = torch.Generator().manual_seed(seed)
    was = unet.training
    unet.eval()
    try:
        vals = [float(noise_prediction_loss(unet, scheduler, latents, cond, generator=g)) for _ in range(repeats)]
    finally:
        unet.train(was)
    return sum(vals) / len(vals)


def draw_indices(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` item indices drawn with replacement (the step's first draw in every mode)."""
    if n < 1:
        raise ValueError("no training items")
    return torch.randint(0, n, (batch_size,), generator=generator)


@torch.no_grad()
def encode_latents(parts: Any, images01: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """VAE latents (posterior mean × scaling factor) of images in [0, 1], encoded once before training.

    diffusers' examples re-encode (and sample the posterior) every step because they augment;
    with a frozen VAE and no augmentation the mean is the same target without the extra cost.
    """
    return torch.cat([parts.encode_image(images01[i:i + batch_size]) for i in range(0, len(images01), batch_size)])


def encode_prompts(parts: Any, prompts: Sequence[str], *, grad: bool) -> torch.Tensor:
    """Text embeddings; with gradients only when the text encoder (or something in it) trains."""
    with torch.set_grad_enabled(grad):
        return parts.encode_text(list(prompts))


def save_parameters(path: str | Path, params: Mapping[str, torch.Tensor]) -> Path:
    """Named tensors as one safetensors file (the checkpoint half a mode writes for resume)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(p))
    return p


def load_parameters(path: str | Path, params: Mapping[str, torch.Tensor]) -> None:
    """Copy the tensors of ``path`` into ``params`` in place (names and shapes must match)."""
    from safetensors.torch import load_file

    stored = load_file(str(path))
    if set(stored) != set(params):
        raise ValueError(f"{path} holds other tensors than this run trains ({len(stored)} vs {len(params)})")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(stored[k].to(p.device, p.dtype))


def fit(modules: Mapping[str, nn.Module], params: Iterable[torch.Tensor] | Sequence[dict[str, Any]], step_fn: StepFn, *,
        steps: int, generator: torch.Generator, lr: float, optimizer: Literal["adamw", "adam"] = "adamw",
        weight_decay: float = ADAM_WEIGHT_DECAY, clip_grad_norm: float | None = MAX_GRAD_NORM,
        checkpoint_params: Mapping[str, torch.Tensor] | None = None, resume_from: str | Path | None = None,
        desc: str = "finetune", **trainer_options: Any) -> Trainer:
    """Run ``step_fn`` for ``steps`` updates of ``params`` on :class:`~anoplug.train.Trainer`; return the trainer.

    ``params`` is a list of tensors or of torch parameter groups (``{"params": [...], "lr": ...}``).
    ``checkpoint_params`` (name → tensor) are what a checkpoint's weights file holds, so
    ``checkpoint_every``/``checkpoint_dir`` and ``resume_from`` work; other ``trainer_options``
    (``gradient_accumulation_steps``, ``mixed_precision``, ``progress``, ``device``, ``meta``, …)
    go to the Trainer unchanged. The trainer's ``history`` has one row per update.
    """
    groups = list(params)
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                                       weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=lr)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'adam', got {optimizer!r}")
    save = load = None
    if checkpoint_params is not None:
        cp = dict(checkpoint_params)

        def save(d: Path) -> None:
            save_parameters(Path(d) / "trained.safetensors", cp)

        def load(d: Path) -> None:
            load_parameters(Path(d) / "trained.safetensors", cp)

    trainer = Trainer(modules, {"finetune": opt}, step_fn, steps=steps, generator=generator,
                      clip_grad_norm=clip_grad_norm, save_weights=save, load_weights=load, desc=desc, **trainer_options)
    trainer.fit(resume_from=resume_from)
    return trainer
