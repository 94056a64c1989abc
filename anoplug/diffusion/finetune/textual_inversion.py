"""Textual inversion: learn token embeddings of a frozen text-to-image model (spec §2.2).

The placeholder mechanism (fixed rows and per-sample injected vectors) is
:mod:`.placeholders`; this module trains it:

1. :func:`~.placeholders.install_placeholders` adds the tokens and wraps the text encoder's
   embedding (rows start at an init word's embedding; the base table stays frozen);
2. each step (:func:`embedding_loss`) draws a batch of items, optionally augments it, and takes
   the shared noise-prediction loss (:func:`.common.noise_prediction_loss`) of the frozen UNet
   conditioned on the prompts, in which the placeholders read the learned rows — or, inside
   ``inject``, per-sample vectors from another module;
3. :func:`train_embeddings` runs those steps on :class:`anoplug.train.Trainer` (Adam, as
   AnomalyDiffusion; diffusers' TI example uses AdamW with weight decay — pass
   ``optimizer="adamw"``); learned generators call :func:`embedding_loss` from their own
   ``training_step`` so that their ``fit`` owns the run;
4. the rows are saved as safetensors (:func:`save_tensors`), or in diffusers' textual-inversion
   format (:func:`save_diffusers_embeddings`), which ``pipe.load_textual_inversion`` reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from anoplug.diffusion.finetune.common import draw_indices, fit, noise_prediction_loss
from anoplug.diffusion.finetune.placeholders import PlaceholderEmbedding, embedding_slot, install_placeholders

__all__ = ["embedding_loss", "train_embeddings", "save_tensors", "load_tensors", "save_diffusers_embeddings",
           "install_placeholders", "PlaceholderEmbedding", "embedding_slot"]

Prompts = Sequence[str] | Callable[[torch.Tensor], list[str]]


def embedding_loss(parts: Any, latents: torch.Tensor, prompts: Prompts, *,
                   batch_size: int, generator: torch.Generator, loss_mask: torch.Tensor | None = None,
                   inject: Callable[[torch.Tensor], contextlib.AbstractContextManager] | None = None,
                   augment: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], tuple] | None = None
                   ) -> torch.Tensor:
    """One training step's ε-prediction loss of a frozen UNet on a batch drawn from ``latents``.

    Draws, in this order, from ``generator``: the ``batch_size`` item indices, the
    augmentation (``augment(z0, mask, indices)``), the timesteps, the noise, then whatever
    ``prompts`` draws. ``loss_mask`` (``[N,1,h,w]`` at latent size) restricts the loss to the
    mask: prediction and target are both multiplied by it and the mean runs over all
    positions (as in AnomalyDiffusion). ``inject(indices)`` returns a context in which the
    text encoder sees the per-sample vectors of those items. ``prompts`` is one prompt per
    item or a callable ``indices -> prompts`` (e.g. a template drawn per step). The caller
    runs the optimiser (a learned generator's ``training_step`` under its ``fit``, or
    :func:`train_embeddings`).
    """
    n = len(latents)
    if n == 0 or (not callable(prompts) and n != len(prompts)):
        raise ValueError(f"need as many prompts as latents, got {0 if callable(prompts) else len(prompts)} for {n}")
    prompt_of = prompts if callable(prompts) else (lambda idx: [prompts[int(i)] for i in idx])
    idx = draw_indices(n, batch_size, generator)
    z0 = latents[idx]
    m = loss_mask[idx] if loss_mask is not None else None
    if augment is not None:
        z0, m = augment(z0, m, idx)

    def cond() -> torch.Tensor:  # after the timestep and noise draws (the order this loss has always had)
        with inject(idx) if inject is not None else contextlib.nullcontext():
            return parts.encode_text(prompt_of(idx))

    return noise_prediction_loss(parts.unet, parts.scheduler, z0, cond, generator=generator, mask=m)


def train_embeddings(parts: Any, latents: torch.Tensor, prompts: Prompts, params: Sequence[torch.Tensor], *,
                     steps: int, lr: float, batch_size: int, generator: torch.Generator,
                     loss_mask: torch.Tensor | None = None,
                     inject: Callable[[torch.Tensor], contextlib.AbstractContextManager] | None = None,
                     augment: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], tuple] | None = None,
                     progress: Callable[[int, int, dict], None] | None = None, optimizer: str = "adam",
                     clip_grad_norm: float | None = None, **trainer_options: Any) -> list[float]:
    """``steps`` updates of :func:`embedding_loss` on ``params`` (Adam, lr ``lr``) on the Trainer; the loss per step.

    ``params`` are the learned tensors (``embedding.learned``, an encoder's weights, …);
    ``trainer_options`` (``checkpoint_every``, ``checkpoint_dir``, ``resume_from``,
    ``gradient_accumulation_steps``, ``mixed_precision``, …) go to :func:`.common.fit`.
    """
    tensors = list(params)
    holder = torch.nn.ParameterList([p for p in tensors if isinstance(p, torch.nn.Parameter)])

    def step(ctx: Any) -> torch.Tensor:
        return embedding_loss(parts, latents, prompts, batch_size=batch_size, generator=ctx.generator,
                              loss_mask=loss_mask, inject=inject, augment=augment)

    trainer = fit({"embeddings": holder}, tensors, step, steps=steps, generator=generator, lr=lr,
                  optimizer=optimizer, clip_grad_norm=clip_grad_norm,  # type: ignore[arg-type]
                  checkpoint_params={str(i): p for i, p in enumerate(tensors)}, desc="textual inversion",
                  progress=progress if progress is not None else False, **trainer_options)
    return [float(row["loss"]) for row in trainer.history]


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """A textual-inversion checkpoint as safetensors (never pickle)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(p), metadata=metadata or {})
    return p


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"embedding checkpoint not found: {p}")
    return load_file(str(p))


def save_diffusers_embeddings(directory: str | Path, embedding: PlaceholderEmbedding, tokenizer: Any) -> list[Path]:
    """The learned rows in diffusers' textual-inversion format: one ``{token: [1, D]}`` file per placeholder.

    diffusers' ``train_textual_inversion.py`` writes this layout, and
    ``pipe.load_textual_inversion(paths)`` adds the tokens to a *plain* pipeline (no anoplug
    wrapper) with these rows. One file per token keeps each token's own name (a single
    multi-vector file would be renamed ``tok``, ``tok_1``, … by diffusers). Per-sample injected
    vectors are not rows and are not exported.
    """
    d = Path(directory)
    tokens = tokenizer.convert_ids_to_tokens(embedding.ids.tolist())
    rows = embedding.learned.detach().float().cpu()
    return [save_tensors(d / f"learned_embeds_{i:02d}.safetensors", {tok: rows[i:i + 1]}) for i, tok in enumerate(tokens)]
