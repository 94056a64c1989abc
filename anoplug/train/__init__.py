"""Training and fine-tuning toolkit: one accelerate loop for every learned part of anoplug.

- :class:`Trainer` (:mod:`anoplug.train.loop`) — seeded loop with gradient accumulation,
  clipping, EMA, mixed precision, progress, safetensors checkpoints and exact resume;
- :mod:`anoplug.train.state` — the checkpoint format and ``latest_checkpoint``;
- :mod:`anoplug.train.log` — the loss history as CSV and a plot for notebooks.
"""

from anoplug.train.gan import GANBatch, GANStep, GANTrainer, ImagePool, apply_spectral_norm
from anoplug.train.loop import MixedPrecision, Progress, StepContext, StepFn, Trainer
from anoplug.train.state import TRAINING_STATE, latest_checkpoint

__all__ = ["Trainer", "StepContext", "StepFn", "Progress", "MixedPrecision", "TRAINING_STATE", "latest_checkpoint",
           "GANTrainer", "GANStep", "GANBatch", "ImagePool", "apply_spectral_norm"]
