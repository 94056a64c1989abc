"""Textual inversion, at its historical import path (kept so existing callers keep working).

The code lives in :mod:`anoplug.diffusion.finetune`: the placeholder-token mechanism (fixed
learned rows and per-sample injected vectors, spec §2.2) in
:mod:`~anoplug.diffusion.finetune.placeholders`, and its training (the ε-loss step, the run on
:class:`anoplug.train.Trainer`, safetensors and diffusers-format saving) in
:mod:`~anoplug.diffusion.finetune.textual_inversion`. New code imports from there.
"""

from __future__ import annotations

from anoplug.diffusion.finetune.placeholders import PlaceholderEmbedding, embedding_slot, install_placeholders
from anoplug.diffusion.finetune.textual_inversion import (
    embedding_loss,
    load_tensors,
    save_diffusers_embeddings,
    save_tensors,
    train_embeddings,
)

__all__ = ["PlaceholderEmbedding", "install_placeholders", "embedding_loss", "train_embeddings", "save_tensors", "load_tensors",
           "embedding_slot", "save_diffusers_embeddings"]
