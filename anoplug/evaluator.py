"""The ``Evaluator`` contract: judge a generated set (fidelity, diversity, masks, utility)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from anoplug.params import ParamError, Params
from anoplug.types import Batch

__all__ = ["Metric", "Report", "Evaluator"]


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

    def __init__(self, params: Params | dict | None = None, **kwargs: Any) -> None:
        if isinstance(params, Params):
            if not isinstance(params, self.Params):
                raise ParamError(f"{self.name}: expected {self.Params.__name__}")
            self.params = params
        else:
            self.params = self.Params.parse(**(params or kwargs))

    def evaluate(self, generated: Batch, *, normals: Batch | None = None, real: Batch | None = None) -> Report:
        raise NotImplementedError
