"""The public contract for learned methods: the plugin supplies modules, a training step and optimisers.

``fit`` is a template (as Lightning's ``training_step``): the base seeds one
``torch.Generator`` for every training draw, builds the modules from the data, runs the
steps, steps the optimisers and schedulers (unless the method steps them itself, as a GAN
does), records the history, writes checkpoints and resumes from them, and marks itself
fitted. A run resumed from a checkpoint at step *k* ends with the same weights as an
uninterrupted run (CPU): the checkpoint holds the weights, the optimiser and scheduler
states, the generator state and the history — as safetensors plus JSON, never pickle.

To write a learned method, implement:

- :meth:`Trainable.build` — create the modules (their shapes may depend on the data) and
  return the prepared training data (e.g. cached frozen-backbone features);
- :meth:`Trainable.optimizers` — the optimisers (and :meth:`Trainable.schedulers`);
- :meth:`Trainable.training_step` — one step: return the loss (the base does backward and
  the optimiser steps) or, with ``manual_optimization = True``, step yourself and return
  the numbers to log;
- :meth:`Generator.modules` / ``extra_state`` — what ``save`` and checkpoints persist.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from anoplug.generator import FeatureGenerator, Generator, Requires
from anoplug.types import Batch

__all__ = ["Trainable", "LearnedGenerator", "LearnedFeatureGenerator", "TRAINING_STATE", "latest_checkpoint"]

TRAINING_STATE = "training_state"  # <dir>/training_state.json + .safetensors next to config.json + weights
Progress = Callable[[int, int, dict], None]


class Trainable:
    """Mixin that gives a generator the ``fit`` template; combine with :class:`Generator` or :class:`FeatureGenerator`."""

    #: the method calls ``zero_grad`` / ``backward`` / ``step`` itself in ``training_step`` (GANs, multi-phase fits)
    manual_optimization: ClassVar[bool] = False
    #: clip the global gradient norm of every optimised parameter to this (automatic optimisation only)
    clip_grad_norm: ClassVar[float | None] = None

    history: list[dict]

    # -- to implement ---------------------------------------------------------------------------
    def build(self, normals: Batch | None, anomalies: Batch | None, generator: torch.Generator) -> Any:
        """Create the modules for this data and return the prepared training data."""
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by name (called after :meth:`build`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement optimizers()")

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer], steps: int) -> dict[str, Any]:
        """Learning-rate schedulers by name, stepped once per training step (none by default)."""
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
            progress: Progress | None = None, resume_from: str | Path | None = None,
            checkpoint_every: int = 0, checkpoint_dir: str | Path | None = None, seed: int | None = None) -> Any:
        """Train on ``normals`` (and real ``anomalies`` for supervised or few-shot methods).

        ``checkpoint_every`` > 0 writes ``checkpoint_dir/step-NNNNNN/`` every that many steps;
        ``resume_from`` (such a directory) continues that run to ``steps``.
        """
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be non-negative, got {checkpoint_every}")
        if checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir")
        g = torch.Generator().manual_seed(self.default_seed() if seed is None else int(seed))
        data = self.build(normals, anomalies, g)
        total = self.planned_steps(steps, data)
        if total < 0:
            raise ValueError(f"steps must be non-negative, got {total}")
        opts = dict(self.optimizers())
        scheds = dict(self.schedulers(opts, total))
        self.history = []
        start = 0
        if resume_from is not None:
            start = self._resume(Path(resume_from), opts, scheds, g, total)
        self.train_mode(True)
        try:
            with torch.enable_grad():
                for step in range(start, total):
                    info = self._one_step(data, step, g, opts, scheds)
                    self.history.append(info)
                    if progress is not None:
                        progress(step + 1, total, info)
                    if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total:
                        self.train_mode(False)
                        self.save_checkpoint(Path(checkpoint_dir) / f"step-{step + 1:06d}", step + 1, total, opts,
                                             scheds, g)
                        self.train_mode(True)
        finally:
            self.train_mode(False)
        self._fitted = True
        return self

    def _one_step(self, data: Any, step: int, g: torch.Generator, opts: dict, scheds: dict) -> dict:
        out = self.training_step(data, step, g)
        if not self.manual_optimization:
            loss = out if isinstance(out, torch.Tensor) else out["loss"]
            for o in opts.values():
                o.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip_grad_norm is not None:
                params = [p for o in opts.values() for grp in o.param_groups for p in grp["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
            for o in opts.values():
                o.step()
            for s in scheds.values():
                s.step()
        items = {"loss": out} if isinstance(out, torch.Tensor) else out
        return {k: float(v.detach()) if isinstance(v, torch.Tensor) else v for k, v in items.items()}

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, directory: Path, step: int, total: int, opts: dict, scheds: dict,
                        g: torch.Generator) -> Path:
        """Weights (``save``) plus the training state, written to a temporary folder and renamed into place."""
        from safetensors.torch import save_file

        from anoplug.serial import pack

        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self._fitted, was = True, self._fitted  # a checkpoint loads as a usable (partly trained) model
        try:
            self.save(tmp)
        finally:
            self._fitted = was
        store: dict[str, torch.Tensor] = {}
        state = {"step": step, "total": total, "history": pack(self.history),
                 "optimizers": {k: pack(o.state_dict(), store, prefix=f"opt/{k}") for k, o in opts.items()},
                 "schedulers": {k: pack(s.state_dict(), store, prefix=f"sched/{k}") for k, s in scheds.items()},
                 "generator": pack(g.get_state(), store, prefix="generator", inline_max=0)}
        save_file(store, str(tmp / f"{TRAINING_STATE}.safetensors"))
        (tmp / f"{TRAINING_STATE}.json").write_text(json.dumps(state, sort_keys=True, allow_nan=False))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.replace(directory)
        return directory

    def _resume(self, directory: Path, opts: dict, scheds: dict, g: torch.Generator, total: int) -> int:
        from safetensors.torch import load_file

        from anoplug.serial import unpack

        js, st = directory / f"{TRAINING_STATE}.json", directory / f"{TRAINING_STATE}.safetensors"
        if not js.is_file() or not st.is_file():
            raise FileNotFoundError(f"{directory} is not a training checkpoint (no {js.name} / {st.name})")
        cfg = json.loads((directory / "config.json").read_text())
        if cfg.get("name") != self.name:
            raise ValueError(f"{directory} is a checkpoint of {cfg.get('name')!r}, not {self.name!r}")
        if cfg.get("params") != self.params.model_dump(mode="json"):
            raise ValueError(f"{directory} was trained with other parameters; resume with the same ones")
        state = json.loads(js.read_text())
        store = load_file(str(st))
        if set(state["optimizers"]) != set(opts) or set(state["schedulers"]) != set(scheds):
            raise ValueError(f"{directory}: optimisers {sorted(state['optimizers'])} do not match {sorted(opts)}")
        if int(state["total"]) != total:
            raise ValueError(f"{directory} was written by a {state['total']}-step run; resume it with steps={state['total']}")
        self.load_weights(directory)
        for k, o in opts.items():
            o.load_state_dict(unpack(state["optimizers"][k], store))
        for k, s in scheds.items():
            current = s.state_dict()
            restored = unpack(state["schedulers"][k], store)
            # keep container types JSON cannot name (MultiStepLR's milestones are a Counter)
            s.load_state_dict({key: type(current[key])(v) if isinstance(current.get(key), dict) else v
                               for key, v in restored.items()})
        g.set_state(unpack(state["generator"], store))
        self.history = list(unpack(state["history"]))
        return int(state["step"])


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The ``step-NNNNNN`` checkpoint with the most steps under ``directory`` (None if there is none)."""
    steps = sorted(Path(directory).glob("step-[0-9]*"))
    steps = [p for p in steps if p.is_dir() and (p / f"{TRAINING_STATE}.json").is_file()]
    return steps[-1] if steps else None


class LearnedGenerator(Trainable, Generator):
    """Image-level learned generator: needs ``fit`` (or ``load``) before ``generate``."""

    requires: ClassVar[Requires] = Requires(fit=True)


class LearnedFeatureGenerator(Trainable, FeatureGenerator):
    """Feature-level generator with a learned detector around it (``fit`` trains the detector)."""
