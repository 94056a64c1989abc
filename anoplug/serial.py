"""Lossless JSON for nested records that hold tensors: sampled draws, optimiser states, checkpoints.

``pack`` turns dicts, lists, tuples, numbers, strings and tensors into JSON-safe values.
A tensor becomes ``{"$tensor": dtype, "shape": [...], "data": [...]}`` with its exact
values (a float32 read as a Python float and back is bit-identical), or, when it is
bigger than ``inline_max`` elements and a ``store`` dict is given, ``{"$tensor": dtype,
"shape": [...], "ref": KEY}`` with the tensor placed in ``store[KEY]`` — a safetensors
side file then keeps it. Tuples come back as tuples, integer keys as integers. ``unpack`` inverts ``pack`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["pack", "unpack", "SerialError", "Samples"]

_TENSOR, _TUPLE, _FLOAT, _ITEMS = "$tensor", "$tuple", "$float", "$items"
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                                       torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                                       torch.bool)}


class SerialError(ValueError):
    """A record holds a value that cannot be written losslessly, or a packed record is malformed."""


def pack(obj: Any, store: dict[str, torch.Tensor] | None = None, *, prefix: str = "", inline_max: int = 64) -> Any:
    """A JSON-safe, lossless form of ``obj`` (tensors over ``inline_max`` elements go to ``store`` if given)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise SerialError(f"{prefix or 'value'}: tensors of dtype {t.dtype} are not supported")
        head = {_TENSOR: dtype, "shape": list(t.shape)}
        if store is not None and t.numel() > inline_max:
            key = prefix or f"t{len(store)}"
            if key in store:
                raise SerialError(f"duplicate tensor key {key!r}")
            store[key] = t.contiguous()
            return {**head, "ref": key}
        flat = t.reshape(-1)
        if t.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()  # exact widening; narrowed back exactly on unpack
        return {**head, "data": [_number(v) for v in flat.tolist()]}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):  # e.g. an optimiser's {param index: state}
            if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in obj):
                raise SerialError(f"{prefix or 'record'}: keys must be strings or integers")
            return {_ITEMS: [[k, pack(v, store, prefix=f"{prefix}/{k}" if prefix else str(k), inline_max=inline_max)]
                             for k, v in obj.items()]}
        out = {}
        for k, v in obj.items():
            if k.startswith("$"):
                raise SerialError(f"{prefix or 'record'}: keys may not start with '$' ({k!r})")
            out[k] = pack(v, store, prefix=f"{prefix}/{k}" if prefix else k, inline_max=inline_max)
        return out
    if isinstance(obj, (list, tuple)):
        items = [pack(v, store, prefix=f"{prefix}/{i}" if prefix else str(i), inline_max=inline_max)
                 for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return _number(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return pack(obj.item(), store, prefix=prefix, inline_max=inline_max)
    raise SerialError(f"{prefix or 'value'}: cannot serialise {type(obj).__name__} losslessly")


def _number(v: Any) -> Any:
    """JSON has no NaN or infinities: those are tagged; every finite float round-trips through repr."""
    if isinstance(v, float) and not math.isfinite(v):
        return {_FLOAT: repr(v)}
    return v


def unpack(obj: Any, store: dict[str, torch.Tensor] | None = None) -> Any:
    """Invert :func:`pack` (tensors referenced by key are read from ``store``)."""
    if isinstance(obj, list):
        return [unpack(v, store) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _FLOAT in obj:
        return float(obj[_FLOAT])
    if _ITEMS in obj:
        return {k: unpack(v, store) for k, v in obj[_ITEMS]}
    if _TUPLE in obj:
        return tuple(unpack(v, store) for v in obj[_TUPLE])
    if _TENSOR in obj:
        dtype = _DTYPES.get(obj[_TENSOR])
        if dtype is None:
            raise SerialError(f"unknown tensor dtype {obj[_TENSOR]!r}")
        shape = [int(s) for s in obj["shape"]]
        if "ref" in obj:
            if store is None or obj["ref"] not in store:
                raise SerialError(f"tensor {obj['ref']!r} is missing from the side file")
            t = store[obj["ref"]]
            if list(t.shape) != shape or t.dtype != dtype:
                raise SerialError(f"tensor {obj['ref']!r} in the side file is {t.dtype} {list(t.shape)}, "
                                  f"expected {dtype} {shape}")
            return t.clone()
        data = [float(v[_FLOAT]) if isinstance(v, dict) else v for v in obj["data"]]
        wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        return torch.tensor(data, dtype=wide).to(dtype).reshape(shape)
    return {k: unpack(v, store) for k, v in obj.items()}


class Samples(list):
    """Every random draw of one ``generate`` call: one record (a dict) per sample, in batch order.

    A record holds plain values and tensors; :func:`anoplug.serial.pack` writes it
    losslessly, and ``generate(batch, samples=...)`` replays it to the same bytes.
    Records are per sample, not stacked, because draws are ragged (NSA draws 1–4 patches).
    """

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, slice):
            return Samples(super().__getitem__(idx))
        return super().__getitem__(idx)

    def select(self, ids: Sequence[int]) -> Samples:
        return Samples(self[i] for i in ids)

    def stack(self, key: str) -> torch.Tensor:
        """One field of every record as a tensor with a leading sample dimension."""
        vals = [r[key] for r in self]
        return torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)

    def pack(self, store: dict[str, torch.Tensor] | None = None, *, inline_max: int = 64) -> list:
        return [pack(r, store, prefix=str(i), inline_max=inline_max) for i, r in enumerate(self)]

    @classmethod
    def unpack(cls, packed: Sequence[Any], store: dict[str, torch.Tensor] | None = None) -> Samples:
        return cls(unpack(r, store) for r in packed)
