"""The ``Evaluator`` contract: judge a generated set (fidelity, diversity, masks, utility)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

from anoplug.params import ParamError, Params
from anoplug.types import Batch

__all__ = ["Metric", "Report", "Evaluator", "MissingMaskError", "maskless_samples"]


class MissingMaskError(ValueError):
    """An evaluator that reads masks was given samples whose method provides none."""


def maskless_samples(batch: Batch) -> list[int]:
    """Indices of anomalous samples without a real mask (``meta["provides_mask"] is False``, see ``Generator.provides_mask``)."""
    return [i for i, m in enumerate(batch.meta) if isinstance(m, dict) and m.get("provides_mask") is False]


@dataclass
class Metric:
    """One named number and which way is better."""

    value: float
    higher_is_better: bool = True
    description: str = ""
    std: float | None = None

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"


@dataclass
class Report:
    """What an evaluator returns: metrics by name, optional figures, free-form details."""

    evaluator: str
    metrics: dict[str, Metric] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        return self.metrics[name].value

    def to_dict(self) -> dict[str, Any]:
        return {"evaluator": self.evaluator,
                "metrics": {k: {"value": m.value, "direction": m.direction, "std": m.std,
                                "description": m.description} for k, m in self.metrics.items()},
                "details": self.details}


class Evaluator:
    """Base class of evaluators."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    #: True when ``evaluate`` reads ``generated.mask`` as where the defects are (mask precision,
    #: pixel-level scores): it then refuses, with :class:`MissingMaskError`, samples whose method
    #: provides no mask, whose all-zero mask would otherwise score as "no defect pixels".
    needs_masks: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("evaluate")
        if own is not None and not getattr(own, "_checks_masks", False):
            @functools.wraps(own)
            def evaluate(self: Evaluator, generated: Batch, *args: Any, **kw: Any) -> Report:
                if self.needs_masks:
                    self.check_masks(generated)
                return own(self, generated, *args, **kw)

            evaluate._checks_masks = True  # type: ignore[attr-defined]
            cls.evaluate = evaluate  # type: ignore[method-assign]

    def check_masks(self, generated: Batch) -> None:
        """Raise :class:`MissingMaskError` naming the first sample whose method provides no mask."""
        missing = maskless_samples(generated)
        if missing:
            meth = generated.meta[missing[0]].get("method", "its method")
            raise MissingMaskError(f"{self.name} reads defect masks, but {len(missing)} of {len(generated)} samples "
                                   f"have none (sample {missing[0]}, made by {meth}, which provides no mask): "
                                   "evaluate them with an image-level evaluator, or generate with a mask")

    def __init__(self, params: Params | dict | None = None, **kwargs: Any) -> None:
        if isinstance(params, Params):
            if not isinstance(params, self.Params):
                raise ParamError(f"{self.name}: expected {self.Params.__name__}")
            self.params = params
        else:
            self.params = self.Params.parse(**(params or kwargs))

    def evaluate(self, generated: Batch, *, normals: Batch | None = None, real: Batch | None = None) -> Report:
        raise NotImplementedError
