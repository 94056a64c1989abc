"""Per-sample conditions: everything a generator is *asked for*, typed, carried by the :class:`~anoplug.Batch`.

One convention for every method: a target mask (where the defect goes), boxes, a prompt,
a paired source image (and its object mask), reference anomaly exemplars. They ride on
``batch.conditions`` and are sliced, indexed, concatenated and moved with the batch, so a
sample's condition can never be handed to another sample's chunk. A generator declares
what it needs and what it honours in ``Requires(conditions=..., accepts=...)``; the host
checks both before it generates. Properties of the image itself (its ``object_mask``, its
``depth``) stay fields of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

__all__ = ["Box", "Conditions", "ConditionError", "CONDITION_NAMES", "is_binary"]

#: (label, x1, y1, x2, y2) with corners normalised to [0, 1]; the label is a defect name or a class id.
Box = tuple[Any, float, float, float, float]


class ConditionError(ValueError):
    """A condition is missing, malformed or not used by the generator; the message names the field."""


@dataclass(frozen=True)
class Conditions:
    """What each sample of a batch is conditioned on; every field is optional, per sample (leading dim B).

    - ``target_mask``: float32 ``[B,1,H,W]`` in {0,1}, where the defect must appear;
    - ``boxes``: one list of :data:`Box` per sample;
    - ``prompt``: one text prompt per sample;
    - ``defect_type``: one defect-type name per sample (a class the method was fitted on), for
      methods that generate a chosen category (Defect-GAN, DT-GAN);
    - ``source_image``: float32 ``[B,3,H,W]``, a second normal image to borrow content from
      (NSA's patch source), with ``source_object_mask`` ``[B,1,H,W]`` optionally;
    - ``references``: float32 ``[B,K,3,H,W]`` reference anomaly exemplars per sample, with
      ``reference_masks`` ``[B,K,1,H,W]`` optionally, and ``reference_captions`` optionally:
      one list of K strings per sample, caption *k* describing reference *k* (methods that
      pair an exemplar with its text, e.g. AnomalyControl's cross-modal prompt).
    """

    target_mask: torch.Tensor | None = None
    boxes: list[list[Box]] | None = None
    prompt: list[str] | None = None
    defect_type: list[str] | None = None
    source_image: torch.Tensor | None = None
    source_object_mask: torch.Tensor | None = None
    references: torch.Tensor | None = None
    reference_masks: torch.Tensor | None = None
    reference_captions: list[list[str]] | None = None

    # -- what is set --------------------------------------------------------------------------
    def present(self) -> tuple[str, ...]:
        """Names of the fields that are set."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def __bool__(self) -> bool:
        return bool(self.present())

    def replace(self, **changes: Any) -> Conditions:
        return replace(self, **changes)

    # -- checks ---------------------------------------------------------------------------------
    def validate(self, n: int, size: tuple[int, int]) -> Conditions:
        """Raise :class:`ConditionError` naming the field whose shape or values break the contract."""
        h, w = size
        expect = {"target_mask": (n, 1, h, w), "source_image": (n, 3, h, w), "source_object_mask": (n, 1, h, w)}
        for name, shape in expect.items():
            t = getattr(self, name)
            if t is None:
                continue
            _need(isinstance(t, torch.Tensor), f"conditions.{name} must be a torch.Tensor, got {type(t).__name__}")
            _need(tuple(t.shape) == shape, f"conditions.{name} must be {list(shape)}, got {list(t.shape)}")
            _need(t.dtype == torch.float32, f"conditions.{name} must be float32, got {t.dtype}")
        for name in ("target_mask", "source_object_mask"):
            t = getattr(self, name)
            if t is not None:
                _need(is_binary(t), f"conditions.{name} must be binary {{0,1}}")
        if self.references is not None:
            r = self.references
            _need(isinstance(r, torch.Tensor) and r.ndim == 5 and r.shape[0] == n and r.shape[2] == 3,
                  f"conditions.references must be [{n},K,3,H,W], got {list(getattr(r, 'shape', []))}")
            if self.reference_masks is not None:
                _need(tuple(self.reference_masks.shape) == (*r.shape[:2], 1, *r.shape[3:]),
                      f"conditions.reference_masks must be {[*r.shape[:2], 1, *r.shape[3:]]}, "
                      f"got {list(self.reference_masks.shape)}")
            if self.reference_captions is not None:
                _check_captions(self.reference_captions, n, r.shape[1])
        elif self.reference_masks is not None:
            raise ConditionError("conditions.reference_masks given without conditions.references")
        elif self.reference_captions is not None:
            raise ConditionError("conditions.reference_captions given without conditions.references")
        if self.source_object_mask is not None and self.source_image is None:
            raise ConditionError("conditions.source_object_mask given without conditions.source_image")
        if self.prompt is not None:
            _need(len(self.prompt) == n and all(isinstance(s, str) for s in self.prompt),
                  f"conditions.prompt must hold {n} strings, got {len(self.prompt)} entries")
        if self.defect_type is not None:
            _need(len(self.defect_type) == n and all(isinstance(s, str) and s.strip() for s in self.defect_type),
                  f"conditions.defect_type must hold {n} non-empty strings, got {len(self.defect_type)} entries")
        if self.boxes is not None:
            _need(len(self.boxes) == n, f"conditions.boxes must hold one list per sample: {len(self.boxes)} for {n}")
            for i, row in enumerate(self.boxes):
                for b in row:
                    ok = len(b) == 5 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in b[1:])
                    ok = ok and 0 <= b[1] < b[3] <= 1 and 0 <= b[2] < b[4] <= 1
                    _need(ok, f"conditions.boxes[{i}]: each box is (label, x1, y1, x2, y2) with "
                              f"0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1, got {b!r}")
        return self

    # -- moving with the batch --------------------------------------------------------------------
    def _map(self, tensor_fn: Callable[[torch.Tensor], torch.Tensor], list_fn: Callable[[list], list]) -> Conditions:
        changes: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                changes[f.name] = tensor_fn(v)
            elif isinstance(v, list):
                changes[f.name] = list_fn(v)
        return replace(self, **changes)

    def select(self, ids: Sequence[int]) -> Conditions:
        """The conditions of samples ``ids`` (what ``batch[ids]`` carries)."""
        it = torch.as_tensor(list(ids), dtype=torch.long)
        return self._map(lambda t: t.index_select(0, it.to(t.device)), lambda v: [_copy(v[i]) for i in ids])

    def to(self, device: str | torch.device) -> Conditions:
        return self._map(lambda t: t.to(device), lambda v: v)

    def clone(self) -> Conditions:
        return self._map(lambda t: t.clone(), lambda v: [_copy(x) for x in v])

    @staticmethod
    def cat(parts: Sequence[Conditions]) -> Conditions:
        """Concatenate per-sample conditions; a field must be set in all parts or in none."""
        if not parts:
            return Conditions()
        changes: dict[str, Any] = {}
        for f in fields(Conditions):
            vals = [getattr(p, f.name) for p in parts]
            if all(v is None for v in vals):
                continue
            if any(v is None for v in vals):
                raise ConditionError(f"conditions.{f.name} is set in some batches only")
            changes[f.name] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else [x for v in vals for x in v]
        return Conditions(**changes)


CONDITION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Conditions))


def is_binary(t: torch.Tensor) -> bool:
    """Every value is 0 or 1: within [0,1] (one aminmax) and Σ t·(1−t) = 0 (one dot product).

    Each term is ≥ 0 on [0,1] and 0 only at 0 and 1, so the sum cannot cancel; NaN fails the
    range test. On CPU this is ~7x cheaper than comparing into boolean tensors.
    """
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    if not (float(lo) >= 0.0 and float(hi) <= 1.0):
        return False
    v = t.reshape(-1)
    return float(torch.dot(v, 1.0 - v)) == 0.0


def _check_captions(caps: Any, n: int, k: int) -> None:
    """One list of ``k`` strings per sample, aligned with ``references[i, :k]``."""
    _need(isinstance(caps, list) and len(caps) == n,
          f"conditions.reference_captions must hold one list per sample: "
          f"{len(caps) if isinstance(caps, list) else type(caps).__name__} for {n}")
    for i, row in enumerate(caps):
        _need(isinstance(row, list) and len(row) == k and all(isinstance(c, str) for c in row),
              f"conditions.reference_captions[{i}] must be a list of {k} strings (one per reference), "
              f"got {row!r:.120}")


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else v


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConditionError(msg)
