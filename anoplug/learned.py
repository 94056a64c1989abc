"""The public contract for learned methods: the plugin supplies modules, a training step and optimisers.

``fit`` is a template (as Lightning's ``training_step``): the base seeds one
``torch.Generator`` for every training draw, builds the modules from the data and hands
them to :class:`anoplug.train.Trainer` (accelerate), which runs the steps, steps the
optimisers and schedulers (unless the method steps them itself, as a GAN does), keeps EMA
copies, records the history, writes checkpoints and resumes from them; the base then marks
itself fitted. A run resumed from a checkpoint at step *k* ends with the same weights as an
uninterrupted run (CPU): the checkpoint holds the weights, the optimiser and scheduler
states, the generator state and the history — as safetensors plus JSON, never pickle.

To write a learned method, implement:

- :meth:`Trainable.build` — create the modules (their shapes may depend on the data) and
  return the prepared training data (e.g. cached frozen-backbone features);
- :meth:`Trainable.optimizers` — the optimisers (and :meth:`Trainable.schedulers`);
- :meth:`Trainable.training_step` — one step: return the loss (the base does backward and
  the optimiser steps) or, with ``manual_optimization = True``, step yourself through
  ``self.trainer.backward(loss)`` / ``self.trainer.optimizer_step("name")`` and return the
  numbers to log;
- :meth:`Generator.modules` / ``extra_state`` — what ``save`` and checkpoints persist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from anoplug.generator import FeatureGenerator, Generator, Requires
from anoplug.train.state import TRAINING_STATE, latest_checkpoint
from anoplug.types import Batch

__all__ = ["Trainable", "LearnedGenerator", "LearnedFeatureGenerator", "TRAINING_STATE", "latest_checkpoint"]

Progress = Callable[[int, int, dict], None]


class Trainable:
    """Mixin that gives a generator the ``fit`` template; combine with :class:`Generator` or :class:`FeatureGenerator`."""

    #: the method calls ``self.trainer.backward`` / ``optimizer_step`` itself (GANs, multi-phase fits)
    manual_optimization: ClassVar[bool] = False
    #: clip the global gradient norm of every optimised parameter to this (automatic optimisation only)
    clip_grad_norm: ClassVar[float | None] = None
    #: micro-steps summed into one optimiser update (the step function is called this many times per step)
    gradient_accumulation_steps: ClassVar[int] = 1
    #: EMA decay per module name (e.g. ``{"generator": 0.999}``); the average replaces the weights at the end
    ema: ClassVar[dict[str, float]] = {}
    #: ``"no"``, ``"bf16"`` or ``"fp16"`` (accelerate's autocast; fp16 needs a GPU)
    mixed_precision: ClassVar[str] = "no"

    history: list[dict]
    trainer: Any = None  # the running :class:`anoplug.train.Trainer` during ``fit``

    # -- to implement ---------------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> Any:
        """Create the modules for this data and return the prepared training data."""
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by name (called after :meth:`build`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement optimizers()")

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer], steps: int) -> dict[str, Any]:
        """Learning-rate schedulers by optimiser name, stepped with their optimiser (none by default)."""
        return {}

    def training_step(self, data: Any, step: int, generator: torch.Generator) -> torch.Tensor | dict[str, Any]:
        """One step on ``data``; every random draw comes from ``generator``."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_step()")

    def default_steps(self) -> int:
        """Steps when ``fit`` gets none: the ``fit_steps`` (or ``steps``) parameter."""
        for name in ("fit_steps", "steps"):
            if name in type(self.params).model_fields:
                return int(getattr(self.params, name))
        raise NotImplementedError(f"{type(self).__name__}: pass steps= or define a fit_steps parameter")

    def planned_steps(self, steps: int | None, data: Any) -> int:
        """Total steps of this fit (multi-phase methods add their phases here)."""
        return self.default_steps() if steps is None else int(steps)

    def default_seed(self) -> int:
        return int(getattr(self.params, "seed", 0))

    def train_mode(self, training: bool) -> None:
        """Switch the learned modules between training and evaluation mode."""
        for m in self.modules().values():
            m.train(training)

    # -- the template ---------------------------------------------------------------------------
    def fit(self, normals: Batch | None, anomalies: Batch | None = None, *, steps: int | None = None,
            progress: Progress | bool | None = None, resume_from: str | Path | None = None,
            checkpoint_every: int = 0, checkpoint_dir: str | Path | None = None, seed: int | None = None) -> Any:
        """Train on ``normals`` (and real ``anomalies`` for supervised or few-shot methods).

        ``checkpoint_every`` > 0 writes ``checkpoint_dir/step-NNNNNN/`` every that many steps;
        ``resume_from`` (such a directory) continues that run to ``steps``. ``progress`` is a
        callback ``(step, total, row)`` or ``True`` for a tqdm bar.
        """
        from anoplug.train import Trainer

        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be non-negative, got {checkpoint_every}")
        if checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir")
        if resume_from is not None:
            self._check_resumable(Path(resume_from))
        g = torch.Generator().manual_seed(self.default_seed() if seed is None else int(seed))
        data = self.build(normals, anomalies, g)
        total = self.planned_steps(steps, data)
        if total < 0:
            raise ValueError(f"steps must be non-negative, got {total}")
        opts = dict(self.optimizers())
        scheds = dict(self.schedulers(opts, total))
        self.trainer = Trainer(
            self.modules(), opts, lambda ctx: self.training_step(data, ctx.step, ctx.generator), steps=total,
            generator=g, schedulers=_by_optimizer(scheds, opts), manual_optimization=self.manual_optimization,
            gradient_accumulation_steps=self.gradient_accumulation_steps, clip_grad_norm=self.clip_grad_norm,
            ema=self.ema, apply_ema=bool(self.ema), mixed_precision=self.mixed_precision,  # type: ignore[arg-type]
            device=getattr(self, "device", None), checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir,
            save_weights=self._save_partly_trained, load_weights=self.load_weights,
            meta={"name": self.name, "params": self.params.model_dump(mode="json")},
            progress=progress if progress is not None else False, desc=f"fit {self.name}")
        try:
            self.history = self.trainer.fit(resume_from)
        finally:
            self.train_mode(False)
        self._fitted = True
        return self

    def _save_partly_trained(self, directory: Path) -> None:
        self._fitted, was = True, self._fitted  # a checkpoint loads as a usable (partly trained) model
        try:
            self.save(directory)
        finally:
            self._fitted = was

    def _check_resumable(self, directory: Path) -> None:
        import json

        from anoplug.train.state import is_checkpoint

        if not is_checkpoint(directory):
            raise FileNotFoundError(f"{directory} is not a training checkpoint (no {TRAINING_STATE}.json / .safetensors)")
        cfg = json.loads((directory / "config.json").read_text())
        if cfg.get("name") != self.name:
            raise ValueError(f"{directory} is a checkpoint of {cfg.get('name')!r}, not {self.name!r}")
        if cfg.get("params") != self.params.model_dump(mode="json"):
            raise ValueError(f"{directory} was trained with other parameters; resume with the same ones")


def _by_optimizer(scheds: dict[str, Any], opts: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """Schedulers keyed by the optimiser they drive (the Trainer steps each with its optimiser)."""
    out: dict[str, Any] = {}
    for name, s in scheds.items():
        owner = next((k for k, o in opts.items() if getattr(s, "optimizer", None) is o), None)
        if owner is None:
            raise ValueError(f"scheduler {name!r} drives none of the optimisers {sorted(opts)}")
        if owner in out:
            raise ValueError(f"two schedulers drive optimiser {owner!r}")
        out[owner] = s
    return out


class LearnedGenerator(Trainable, Generator):
    """Image-level learned generator: needs ``fit`` (or ``load``) before ``generate``."""

    requires: ClassVar[Requires] = Requires(fit=True)


class LearnedFeatureGenerator(Trainable, FeatureGenerator):
    """Feature-level generator with a learned detector around it (``fit`` trains the detector)."""
