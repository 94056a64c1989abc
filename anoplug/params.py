"""``Params``: the pydantic base every method's parameter model derives from.

One declaration drives validation, the CLI (``-p key=value``), ``anoplug info`` and the
widget explorer, so each field must carry a default, a range or choices, and a
one-line description.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["Params", "ParamError", "coerce_value", "describe_field", "format_validation_error"]


class ParamError(ValueError):
    """A parameter value is invalid; the message names the parameter."""


class Params(BaseModel):
    """Base class for method parameters: unknown names are rejected, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @classmethod
    def parse(cls, **values: Any) -> Params:
        """Validate ``values``; raise :class:`ParamError` naming the first bad field."""
        try:
            return cls(**values)
        except ValidationError as e:
            raise ParamError(format_validation_error(e, cls)) from None

    @classmethod
    def from_strings(cls, pairs: dict[str, str]) -> Params:
        """Parse CLI ``key=value`` strings, converting each by its field's annotation."""
        values: dict[str, Any] = {}
        for key, raw in pairs.items():
            if key not in cls.model_fields:
                raise ParamError(f"unknown parameter {key!r} for {cls.__qualname__}; known: {', '.join(cls.model_fields)}")
            values[key] = coerce_value(raw, cls.model_fields[key].annotation)
        return cls.parse(**values)


def coerce_value(raw: str, ann: Any) -> Any:
    """Convert a text value (CLI ``-p``, widget text box) towards a field's annotation."""
    origin = typing.get_origin(ann)
    if ann is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        return raw
    if origin is tuple or ann is tuple:
        return tuple(x for x in raw.replace("(", "").replace(")", "").split(",") if x.strip())
    return raw  # pydantic's lax mode converts "0.3" -> 0.3 and checks Literal choices


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    """One line naming the parameter, the rule and the value given."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e.get("loc", ())) or "?"
    if e.get("type") == "extra_forbidden":
        return f"unknown parameter {loc!r}; known: {', '.join(model.model_fields)}"
    return f"invalid parameter {loc!r}: {e.get('msg')} (got {e.get('input')!r})"


def describe_field(model: type[BaseModel], name: str) -> dict[str, Any]:
    """Default, bounds or choices, and description of one field (for CLI and widgets)."""
    f = model.model_fields[name]
    info: dict[str, Any] = {"name": name, "default": f.default, "description": f.description or "",
                            "type": getattr(f.annotation, "__name__", str(f.annotation))}
    for m in f.metadata:
        for attr, key in (("ge", "min"), ("gt", "min"), ("le", "max"), ("lt", "max")):
            if getattr(m, attr, None) is not None:
                info[key] = getattr(m, attr)
                info[f"{key}_exclusive"] = attr in ("gt", "lt")
    if typing.get_origin(f.annotation) is typing.Literal:
        info["choices"] = list(typing.get_args(f.annotation))
        info["type"] = "choice"
    return info
