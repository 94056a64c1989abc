"""Datasets: the embedded procedural one, real-dataset loaders, and the MVTec-layout writer."""

from __future__ import annotations

import re

from anoplug.data.base import DataError, Dataset

__all__ = ["Dataset", "DataError", "open_dataset", "split_options"]

_OPTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=[^&=?]*")


def split_options(rest: str, accepted: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``"metal?difficulty=hard&width=0.5"`` -> (``"metal"``, {option: text}) for a dataset with ``accepted`` options.

    A dataset that declares no options gets ``rest`` unchanged (a path may hold a ``?``).
    Options are ``KEY=VALUE`` pairs joined by ``&``; an unknown or repeated key is an error.
    """
    if not accepted or "?" not in rest:
        return rest, {}
    head, _, query = rest.partition("?")
    pairs = query.split("&") if query else []
    if not pairs or not all(_OPTION.fullmatch(p) for p in pairs):
        raise DataError(f"options {query!r} must look like KEY=VALUE[&KEY=VALUE...], e.g. difficulty=hard")
    options: dict[str, str] = {}
    for p in pairs:
        key, _, value = p.partition("=")
        if key not in accepted:
            raise DataError(f"unknown option {key!r}; this data source accepts: {', '.join(accepted)}")
        if key in options:
            raise DataError(f"option {key!r} is given twice")
        options[key] = value
    return head, options


def open_dataset(source: str, *, split: str = "train", size: int = 256, **kw) -> Dataset:
    """Open ``toy:CATEGORY``, ``mvtec:PATH/CATEGORY``, ``visa:PATH/CATEGORY``, ``folder:PATH``, ...

    The scheme is looked up among registered dataset specs; anything else is a clear error.
    A dataset class may declare ``options`` (names): ``SCHEME:REST?KEY=VALUE&...`` then
    passes them as keyword arguments, e.g. ``toy:metal?difficulty=hard``.
    """
    from anoplug.registry import get_registry

    scheme, sep, rest = source.partition(":")
    specs = {s.scheme or s.name: s for s in get_registry().specs("datasets").values()}
    if not sep or scheme not in specs:
        raise DataError(f"unknown data source {source!r}; use one of: "
                        + ", ".join(f"{k}:..." for k in sorted(specs)))
    if not rest:
        raise DataError(f"data source {source!r} names no category or path after '{scheme}:'")
    cls = get_registry().load_spec("datasets", specs[scheme].name)
    try:
        rest, options = split_options(rest, tuple(getattr(cls, "options", ()) or ()))
    except DataError as e:
        raise DataError(f"data source {source!r}: {e}") from None
    twice = sorted(set(options) & set(kw))
    if twice:
        raise DataError(f"data source {source!r} sets {twice[0]!r}, which is also passed as a keyword")
    if not rest:
        raise DataError(f"data source {source!r} names no category or path after '{scheme}:'")
    return cls.open(rest, split=split, size=size, **options, **kw)
