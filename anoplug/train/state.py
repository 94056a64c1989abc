"""Training checkpoints as safetensors + JSON: weights, optimisers, schedulers, EMA, RNG, history.

accelerate's ``save_state`` pickles the optimiser and RNG states (``torch.save``), which a
``weights_only`` loader refuses; anoplug's rule is "never pickle", so the state is packed
losslessly with :mod:`anoplug.serial` into one safetensors file plus a JSON index, and the
folder is written under a temporary name and renamed into place (a crash never leaves a
half checkpoint that ``latest_checkpoint`` would pick).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["TRAINING_STATE", "TrainingState", "write_checkpoint", "read_checkpoint", "latest_checkpoint", "is_checkpoint"]

TRAINING_STATE = "training_state"  # <dir>/training_state.json + .safetensors next to the weights


class TrainingState(dict):
    """What a checkpoint holds besides the weights (a plain dict with the keys below)."""

    KEYS = ("step", "total", "history", "optimizers", "schedulers", "ema", "generator", "meta")


def is_checkpoint(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / f"{TRAINING_STATE}.json").is_file() and (d / f"{TRAINING_STATE}.safetensors").is_file()


def write_checkpoint(directory: str | Path, *, step: int, total: int, history: list[dict],
                     optimizers: Mapping[str, torch.optim.Optimizer], schedulers: Mapping[str, Any],
                     ema: Mapping[str, Any], generator: torch.Generator, meta: Mapping[str, Any] | None = None,
                     save_weights: Callable[[Path], Any] | None = None) -> Path:
    """Write ``directory`` atomically: ``save_weights(tmp)`` first, then the training state next to it."""
    from safetensors.torch import save_file

    from anoplug.serial import pack

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if save_weights is not None:
        save_weights(tmp)
    store: dict[str, torch.Tensor] = {}
    state = {"step": int(step), "total": int(total), "history": pack(history),
             "optimizers": {k: pack(o.state_dict(), store, prefix=f"opt/{k}") for k, o in optimizers.items()},
             "schedulers": {k: pack(s.state_dict(), store, prefix=f"sched/{k}") for k, s in schedulers.items()},
             "ema": {k: pack(e.state_dict(), store, prefix=f"ema/{k}", inline_max=0) for k, e in ema.items()},
             "generator": pack(generator.get_state(), store, prefix="generator", inline_max=0),
             "meta": dict(meta or {})}
    save_file({k: v.contiguous() for k, v in store.items()}, str(tmp / f"{TRAINING_STATE}.safetensors"))
    (tmp / f"{TRAINING_STATE}.json").write_text(json.dumps(state, sort_keys=True, allow_nan=False))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.replace(directory)
    return directory


def read_checkpoint(directory: str | Path, *, optimizers: Mapping[str, torch.optim.Optimizer],
                    schedulers: Mapping[str, Any], ema: Mapping[str, Any], generator: torch.Generator,
                    total: int, meta: Mapping[str, Any] | None = None) -> tuple[int, list[dict]]:
    """Restore the states in place from ``directory``; return (step reached, history so far).

    Refuses a checkpoint of another run (other optimisers, EMA modules, total or ``meta``) with
    a message that says which.
    """
    from safetensors.torch import load_file

    from anoplug.serial import unpack

    directory = Path(directory)
    if not is_checkpoint(directory):
        raise FileNotFoundError(f"{directory} is not a training checkpoint (no {TRAINING_STATE}.json / .safetensors)")
    state = json.loads((directory / f"{TRAINING_STATE}.json").read_text())
    store = load_file(str(directory / f"{TRAINING_STATE}.safetensors"))
    for key, live in (("optimizers", optimizers), ("schedulers", schedulers), ("ema", ema)):
        if set(state.get(key, {})) != set(live):
            raise ValueError(f"{directory}: {key} {sorted(state.get(key, {}))} do not match this run's {sorted(live)}")
    if int(state["total"]) != int(total):
        raise ValueError(f"{directory} was written by a {state['total']}-step run; resume it with steps={state['total']}")
    for k, want in dict(meta or {}).items():
        if state.get("meta", {}).get(k) != want:
            raise ValueError(f"{directory} was trained with another {k}; resume with the same one")
    for k, o in optimizers.items():
        o.load_state_dict(unpack(state["optimizers"][k], store))
    for k, s in schedulers.items():
        current = s.state_dict()
        restored = unpack(state["schedulers"][k], store)
        # keep container types JSON cannot name (MultiStepLR's milestones are a Counter)
        s.load_state_dict({key: type(current[key])(v) if isinstance(current.get(key), dict) else v
                           for key, v in restored.items()})
    for k, e in ema.items():
        e.load_state_dict(unpack(state["ema"][k], store))
    generator.set_state(unpack(state["generator"], store))
    return int(state["step"]), list(unpack(state["history"]))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The ``step-NNNNNN`` checkpoint with the most steps under ``directory`` (None if there is none)."""
    steps = sorted(p for p in Path(directory).glob("step-[0-9]*") if p.is_dir() and is_checkpoint(p))
    return steps[-1] if steps else None
