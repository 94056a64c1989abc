"""Datasets: the embedded procedural one, real-dataset loaders, and the MVTec-layout writer."""

from __future__ import annotations

from anoplug.data.base import DataError, Dataset

__all__ = ["Dataset", "DataError", "open_dataset"]


def open_dataset(source: str, *, split: str = "train", size: int = 256, **kw) -> Dataset:
    """Open ``toy:CATEGORY``, ``mvtec:PATH/CATEGORY``, ``visa:PATH/CATEGORY``, ``folder:PATH``, ...

    The scheme is looked up among registered dataset specs; anything else is a clear error.
    """
    from anoplug.registry import get_registry

    scheme, sep, rest = source.partition(":")
    specs = {s.scheme or s.name: s for s in get_registry().specs("datasets").values()}
    if not sep or scheme not in specs:
        raise DataError(f"unknown data source {source!r}; use one of: "
                        + ", ".join(f"{k}:..." for k in sorted(specs)))
    if not rest:
        raise DataError(f"data source {source!r} names no category or path after '{scheme}:'")
    return get_registry().load_spec("datasets", specs[scheme].name).open(rest, split=split, size=size, **kw)
