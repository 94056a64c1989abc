"""The one training loop of anoplug, on Hugging Face ``accelerate``.

Every learned part of anoplug — a plugin's ``fit``, textual inversion, the detector of the
downstream-utility metric, the tiny models' training scripts, the GAN trainer — runs
through :class:`Trainer`: the plugin gives its modules, optimisers, schedulers and a
*step function*; the loop does the rest, the same way on one CPU, one GPU or several
processes (``accelerate launch --multi_gpu --num_processes 2`` also works on CPUs):

1. one ``accelerate.Accelerator`` per run (device, mixed precision, gradient
   accumulation, process group);
2. every random draw of training from one seeded ``torch.Generator`` (each process of a
   multi-process run re-seeds it after the modules are built, so the start weights agree
   and the data draws differ);
3. per update: ``gradient_accumulation_steps`` calls of the step function under
   ``accelerator.accumulate()`` and ``autocast()``; ``accelerator.backward``; gradients
   averaged across processes; global-norm clipping; the optimisers and schedulers step;
   EMA copies of chosen modules update;
4. a history row per update (``loss`` and whatever else the step returns), a tqdm bar
   showing it, an optional callback;
5. checkpoints every K updates (:mod:`anoplug.train.state`, safetensors + JSON) and
   ``resume_from`` that ends with the same weights as an uninterrupted run on CPU.

Models are not wrapped in ``DistributedDataParallel``: a plugin's step calls its modules
in its own way (frozen backbones, several networks, feature hooks), so a wrapper in front
of one module would not see most calls; the loop all-reduces the gradients of every
optimised parameter instead (``accelerator.reduce``) and, after each update, copies process
0's buffers (BatchNorm statistics) to the others — what DDP computes with its defaults.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from anoplug.train.state import read_checkpoint, write_checkpoint

__all__ = ["Trainer", "StepContext", "StepFn", "Progress", "MixedPrecision"]

MixedPrecision = Literal["no", "fp16", "bf16"]
Progress = Callable[[int, int, dict], None]


@dataclass
class StepContext:
    """What the step function gets: the update index, the generator, and (manual mode) the optimiser controls."""

    step: int
    micro: int
    generator: torch.Generator
    trainer: Trainer = field(repr=False)

    @property
    def accelerator(self) -> Any:
        return self.trainer.accelerator

    def backward(self, loss: torch.Tensor) -> None:
        self.trainer.backward(loss)

    def optimizer_step(self, *names: str) -> None:
        self.trainer.optimizer_step(*names)

    def zero_grad(self, *names: str) -> None:
        self.trainer.zero_grad(*names)


StepFn = Callable[[StepContext], "torch.Tensor | dict[str, Any]"]


class Trainer:
    """Run ``steps`` optimiser updates of ``step_fn`` on ``modules`` (see the module docstring).

    ``step_fn(ctx)`` returns the loss (or a dict with ``"loss"`` and other numbers to log).
    With ``manual_optimization`` it calls ``ctx.backward`` / ``ctx.optimizer_step`` itself
    (GANs: several optimisers per update) and returns only numbers to log.
    ``ema={"name": decay}`` keeps an exponential moving average of those modules
    (``torch.optim.swa_utils.AveragedModel``); ``apply_ema=True`` copies it into the live
    modules when the run ends (a GAN's generator is used through its EMA).
    """

    def __init__(self, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
                 step_fn: StepFn, *, steps: int, generator: torch.Generator,
                 schedulers: Mapping[str, Any] | None = None, manual_optimization: bool = False,
                 gradient_accumulation_steps: int = 1, clip_grad_norm: float | None = None,
                 ema: Mapping[str, float] | None = None, apply_ema: bool = False,
                 mixed_precision: MixedPrecision = "no", device: torch.device | str | None = None,
                 checkpoint_every: int = 0, checkpoint_dir: str | Path | None = None,
                 save_weights: Callable[[Path], Any] | None = None, load_weights: Callable[[Path], Any] | None = None,
                 meta: Mapping[str, Any] | None = None, progress: bool | Progress = False,
                 desc: str = "train") -> None:
        if steps < 0:
            raise ValueError(f"steps must be non-negative, got {steps}")
        if gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be non-negative, got {checkpoint_every}")
        if checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir")
        if mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {mixed_precision!r}")
        unknown = set(ema or {}) - set(modules)
        if unknown:
            raise ValueError(f"ema names {sorted(unknown)} are not among the modules {sorted(modules)}")
        for name, decay in (ema or {}).items():
            if not 0.0 <= decay < 1.0:
                raise ValueError(f"ema decay of {name!r} must be in [0, 1), got {decay}")
        self.modules = dict(modules)
        self.optimizers = dict(optimizers)
        self.schedulers = dict(schedulers or {})
        self.step_fn = step_fn
        self.steps = int(steps)
        self.generator = generator
        self.manual_optimization = manual_optimization
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)
        self.clip_grad_norm = clip_grad_norm
        self.ema_decay = dict(ema or {})
        self.apply_ema = apply_ema
        self.mixed_precision = mixed_precision
        self.device = torch.device(device) if device is not None else _module_device(self.modules)
        self.checkpoint_every = int(checkpoint_every)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.save_weights = save_weights
        self.load_weights = load_weights
        self.meta = dict(meta or {})
        self.progress = progress
        self.desc = desc
        self.history: list[dict] = []
        self.ema: dict[str, torch.optim.swa_utils.AveragedModel] = {}
        self.accelerator: Any = None
        self._prepared: dict[str, Any] = {}
        self._prepared_scheds: dict[str, Any] = {}

    # -- 1. the accelerator ------------------------------------------------------------------
    def _accelerator(self) -> Any:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, PartialState

        state = AcceleratorState._shared_state
        if state and state.get("_mixed_precision", "no") != self.mixed_precision and not PartialState().use_distributed:
            # accelerate keeps one process-wide state; in one process, runs one after another may
            # ask for different precisions (a test suite, a notebook), so start a new state.
            AcceleratorState._reset_state()
        return Accelerator(cpu=self.device.type == "cpu", mixed_precision=self.mixed_precision,
                           gradient_accumulation_steps=self.gradient_accumulation_steps,
                           step_scheduler_with_optimizer=False)

    # -- the run -----------------------------------------------------------------------------
    def fit(self, resume_from: str | Path | None = None) -> list[dict]:
        """Train to ``steps`` (from ``resume_from``'s step if given); return the history."""
        acc = self.accelerator = self._accelerator()
        names = list(self.optimizers)
        prepared = acc.prepare(*self.optimizers.values()) if names else ()
        prepared = prepared if isinstance(prepared, (tuple, list)) else (prepared,)
        self._prepared = dict(zip(names, prepared))
        self.ema = {n: _averaged(self.modules[n], d) for n, d in self.ema_decay.items()}
        start = 0
        self.history = []
        if resume_from is not None:
            if self.load_weights is not None:
                self.load_weights(Path(resume_from))
            start, self.history = read_checkpoint(resume_from, optimizers=self.optimizers, schedulers=self.schedulers,
                                                  ema=self.ema, generator=self.generator, total=self.steps, meta=self.meta)
        if acc.num_processes > 1:  # 2. same start weights everywhere, different data draws per process
            self._broadcast_modules()
            self.generator.manual_seed(int(self.generator.initial_seed()) * 1000 + acc.process_index + 1)
        bar = self._bar(start)
        for m in self.modules.values():
            m.train(True)
        try:
            with torch.enable_grad():
                for step in range(start, self.steps):
                    row = self._one_update(step)
                    self.history.append(row)
                    self._report(bar, step, row)
                    if self.checkpoint_every and (step + 1) % self.checkpoint_every == 0 and step + 1 < self.steps:
                        self.checkpoint(self.checkpoint_dir / f"step-{step + 1:06d}", step + 1)
        finally:
            for m in self.modules.values():
                m.train(False)
            if bar is not None:
                bar.close()
        if self.apply_ema:
            self.copy_ema_into_modules()
        return self.history

    # -- 3. one update -----------------------------------------------------------------------
    def _one_update(self, step: int) -> dict:
        acc = self.accelerator
        rows: list[dict] = []
        for micro in range(self.gradient_accumulation_steps):
            ctx = StepContext(step=step, micro=micro, generator=self.generator, trainer=self)
            with acc.accumulate(), acc.autocast():
                out = self.step_fn(ctx)
                if not self.manual_optimization:
                    loss = out if isinstance(out, torch.Tensor) else out["loss"]
                    acc.backward(loss)
            if not self.manual_optimization and acc.sync_gradients:
                self._update(tuple(self.optimizers))
            rows.append({"loss": out} if isinstance(out, torch.Tensor) else dict(out))
        return _mean_rows(rows)

    # -- manual optimisation (GANs, multi-phase fits) -----------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """Backward through accelerate (loss scaling for fp16 and gradient accumulation)."""
        self.accelerator.backward(loss)

    def optimizer_step(self, *names: str) -> None:
        """Sync, clip and step the named optimisers (all if none) with their schedulers; zero their grads.

        Under gradient accumulation this does nothing until the last micro-step of the update.
        """
        unknown = set(names) - set(self.optimizers)
        if unknown:
            raise KeyError(f"no optimiser {sorted(unknown)}; this run has {sorted(self.optimizers)}")
        if self.accelerator.sync_gradients:
            self._update(names or tuple(self.optimizers))

    def zero_grad(self, *names: str) -> None:
        for n in names or tuple(self.optimizers):
            self.optimizers[n].zero_grad(set_to_none=True)

    def _update(self, names: tuple[str, ...]) -> None:
        """Average gradients over processes, clip, step optimisers and their schedulers, update EMA."""
        acc = self.accelerator
        params = [p for n in names for grp in self.optimizers[n].param_groups for p in grp["params"]]
        if acc.num_processes > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(acc.reduce(p.grad, reduction="mean"))
        if self.clip_grad_norm is not None:
            acc.clip_grad_norm_(params, self.clip_grad_norm)
        for n in names:
            self._prepared[n].step()
        for n in names:
            if n in self.schedulers:
                self.schedulers[n].step()
            self._prepared[n].zero_grad(set_to_none=True)
        stepped = {id(p) for p in params}
        for n, e in self.ema.items():  # only modules these optimisers moved (a GAN's D step leaves G's EMA alone)
            if any(id(p) in stepped for p in self.modules[n].parameters()):
                e.update_parameters(self.modules[n])
        if acc.num_processes > 1:  # as DDP's broadcast_buffers: BatchNorm statistics follow process 0
            self._broadcast_modules(buffers_only=True)

    def _broadcast_modules(self, buffers_only: bool = False) -> None:
        from accelerate.utils import broadcast

        with torch.no_grad():
            for m in self.modules.values():
                for t in [*([] if buffers_only else m.parameters()), *m.buffers()]:
                    t.copy_(broadcast(t.detach().clone(), from_process=0))

    # -- 4. progress -------------------------------------------------------------------------
    def _bar(self, start: int) -> Any:
        if self.progress is not True or not self.accelerator.is_local_main_process:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.steps, initial=start, desc=self.desc, leave=False)

    def _report(self, bar: Any, step: int, row: dict) -> None:
        if bar is not None:
            bar.update(1)
            shown = ["loss"] if isinstance(row.get("loss"), float) else \
                [k for k, v in row.items() if isinstance(v, float) and "/" not in k][:3]  # a GAN: d_loss, g_loss
            if shown:
                bar.set_postfix({k: f"{row[k]:.4g}" for k in shown}, refresh=False)
        if callable(self.progress):
            self.progress(step + 1, self.steps, row)

    # -- 5. checkpoints and EMA --------------------------------------------------------------
    def checkpoint(self, directory: str | Path, step: int | None = None) -> Path | None:
        """Write a checkpoint (main process only) with the live weights, every state and the history."""
        step = len(self.history) if step is None else step
        path = None
        if self.accelerator is None or self.accelerator.is_main_process:
            for m in self.modules.values():
                m.train(False)
            try:
                path = write_checkpoint(directory, step=step, total=self.steps, history=self.history,
                                        optimizers=self.optimizers, schedulers=self.schedulers, ema=self.ema,
                                        generator=self.generator, meta=self.meta, save_weights=self.save_weights)
            finally:
                for m in self.modules.values():
                    m.train(True)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return path

    def copy_ema_into_modules(self) -> None:
        """Replace the live weights of every EMA'd module by its average."""
        with torch.no_grad():
            for n, e in self.ema.items():
                self.modules[n].load_state_dict(e.module.state_dict())

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Temporarily evaluate with the EMA weights (e.g. to sample a GAN mid-training)."""
        saved = {n: {k: v.clone() for k, v in self.modules[n].state_dict().items()} for n in self.ema}
        self.copy_ema_into_modules()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, sd in saved.items():
                    self.modules[n].load_state_dict(sd)


def _averaged(module: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _module_device(modules: Mapping[str, nn.Module]) -> torch.device:
    for m in modules.values():
        for p in m.parameters():
            return p.device
    return torch.device("cpu")


def _mean_rows(rows: list[dict]) -> dict:
    """One history row per update: numbers averaged over the micro-steps, other values from the last."""
    out: dict[str, Any] = {}
    for k in rows[-1]:
        vals = [r[k] for r in rows if k in r]
        nums = [float(v.detach()) if isinstance(v, torch.Tensor) else v for v in vals]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nums):
            mean = math.fsum(nums) / len(nums)
            out[k] = mean if any(isinstance(v, float) for v in nums) or len(nums) > 1 else nums[-1]
        else:
            out[k] = nums[-1]
    return out
