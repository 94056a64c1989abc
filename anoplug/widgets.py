"""Parameter explorers for notebooks: move a slider, see what it does to a defect and its mask.

``explore("cutpaste", images)`` builds an ipywidgets UI from any generator's ``Params``
(slider for a bounded number, dropdown for choices, checkbox for a bool, text otherwise,
plus a seed box). Fast methods update live (``continuous_update=False`` and a short
debounce); slow ones (learned, diffusion, feature-level) get a Generate button. Results
are cached by (params, seed), so stepping back to a setting is instant.

Two facts about ipywidgets shape the error handling: an exception inside a widget
callback never fails nbval or papermill, and ``interact_manual`` never runs on
construction. So every explorer computes once when built, keeps the last result and error
on the object (``explorer.result`` / ``explorer.error``) for a plain cell to assert on, shows
errors in the UI, and re-raises them when ``ANOPLUG_STRICT=1``.
"""

from __future__ import annotations

import asyncio
import copy
import html
import io
import json
import os
import time
import types
import typing
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import torch

from anoplug.data.base import Dataset
from anoplug.data.inputs import InMemoryDataset, sample_inputs
from anoplug.driver import CachedSource, FixedConditions, generate_batch
from anoplug.ops import as_batch
from anoplug.params import ParamError, Params, coerce_value, describe_field
from anoplug.types import Batch

__all__ = ["explore", "compare", "Explorer", "Comparison", "controls_for", "as_batch", "debounce", "LRUCache"]

STRICT_ENV = "ANOPLUG_STRICT"
#: Categories whose methods take seconds per call: they get a Generate button, not live updates.
SLOW_CATEGORIES = ("diffusion-text", "diffusion-image", "multimodal-text-image", "multimodal-image-depth", "gan")


def strict() -> bool:
    """``ANOPLUG_STRICT=1``: callback errors are re-raised, not only shown (for CI and debugging)."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0", "false", "False")


# -- small building blocks ----------------------------------------------------------------
class LRUCache:
    """A tiny least-recently-used cache (results keyed by (params, seed))."""

    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._d: OrderedDict[Any, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any:
        if key in self._d:
            self._d.move_to_end(key)
            self.hits += 1
            return self._d[key]
        self.misses += 1
        return None

    def put(self, key: Any, value: Any) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.maxsize:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: Any) -> bool:
        return key in self._d


def debounce(wait: float) -> Callable[[Callable[[], Any]], Callable[[], None]]:
    """Collapse a burst of calls into one, ``wait`` seconds after the last (the ipywidgets recipe).

    Inside a running kernel the call is scheduled on its asyncio loop; with no running loop
    (plain Python, unit tests) or ``wait <= 0`` it runs at once, so behaviour stays testable.
    """

    def decorate(fn: Callable[[], Any]) -> Callable[[], None]:
        handle: list[asyncio.TimerHandle | None] = [None]

        def call() -> None:
            if handle[0] is not None:
                handle[0].cancel()
                handle[0] = None
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if wait <= 0 or loop is None:
                fn()
            else:
                handle[0] = loop.call_later(wait, fn)

        call.pending = lambda: handle[0] is not None and not handle[0].cancelled()  # type: ignore[attr-defined]
        return call

    return decorate


def _nice_step(lo: float, hi: float) -> float:
    """A round step giving roughly 100 positions between ``lo`` and ``hi``."""
    span = float(hi) - float(lo)
    if span <= 0:
        return 0.01
    raw = span / 100
    mag = 10 ** np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(raw)


def _base_type(ann: Any) -> Any:
    """``Optional[X]`` -> ``X``; anything else unchanged."""
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return ann


def controls_for(params_cls: type[Params], fixed: dict | None = None, *, show: Sequence[str] | None = None
                 ) -> dict[str, W.Widget]:
    """One widget per parameter of ``params_cls`` not in ``fixed`` (and in ``show`` if given), at its default."""
    fixed = fixed or {}
    if show is not None:
        unknown = [k for k in show if k not in params_cls.model_fields]
        if unknown:
            raise ParamError(f"unknown parameter {unknown[0]!r} in show=; known: {', '.join(params_cls.model_fields)}")
    out: dict[str, W.Widget] = {}
    for name, field in params_cls.model_fields.items():
        if name in fixed or (show is not None and name not in show):
            continue
        info = describe_field(params_cls, name)
        ann = _base_type(field.annotation)
        default = field.default
        common = {"description": name, "style": {"description_width": "initial"},
                  "layout": W.Layout(width="340px"), "tooltip": info["description"]}
        if ann is bool:
            w: W.Widget = W.Checkbox(value=bool(default), indent=False, **common)
        elif "choices" in info:
            w = W.Dropdown(options=info["choices"], value=default, **common)
        elif ann in (int, float) and "min" in info and "max" in info and default is not None:
            lo, hi = info["min"], info["max"]
            if ann is int:
                lo = lo + 1 if info.get("min_exclusive") else lo
                hi = hi - 1 if info.get("max_exclusive") else hi
                w = W.IntSlider(value=int(default), min=int(lo), max=int(hi), step=1, continuous_update=False, **common)
            else:
                step = _nice_step(lo, hi)
                lo = lo + step if info.get("min_exclusive") else lo
                hi = hi - step if info.get("max_exclusive") else hi
                w = W.FloatSlider(value=float(default), min=float(lo), max=float(hi), step=step,
                                  readout_format=".3g", continuous_update=False, **common)
        elif ann is int and default is not None:
            w = W.IntText(value=int(default), **common)
        elif ann is float and default is not None:
            w = W.FloatText(value=float(default), **common)
        else:  # str, tuples, optional values: edited as text, converted by the field's annotation
            text = "" if default is None else (", ".join(str(v) for v in default) if isinstance(default, (tuple, list))
                                               else str(default))
            w = W.Text(value=text, continuous_update=False, **common)
        w.anoplug_field = name  # type: ignore[attr-defined]
        out[name] = w
    return out


def _read_control(params_cls: type[Params], name: str, widget: W.Widget) -> Any:
    value = widget.value
    if isinstance(widget, W.Text):
        ann = _base_type(params_cls.model_fields[name].annotation)
        if value.strip() == "" and params_cls.model_fields[name].default is None:
            return None
        return coerce_value(value, ann)
    return value


# -- inputs ---------------------------------------------------------------------------------
def default_images(n: int = 4, size: int = 128) -> Batch:
    """The embedded toy dataset (fabric, train split): no download, always available."""
    try:
        from anoplug.data import open_dataset

        ds = open_dataset("toy:fabric", split="train", size=size)
        return ds.batch(list(range(min(n, len(ds)))))
    except Exception:  # toy dataset not installed in this build: the kit's synthetic textures
        from anoplug.testing import make_toy_batch

        return make_toy_batch(n, size)


def explorer_source(images: Any, n: int = 4, size: int = 128) -> tuple[Dataset, int]:
    """(source dataset, how many of its images to show): a dataset stays a dataset, so a paired-source
    method borrows from the same neighbour as in ``anoplug generate``; anything else becomes one."""
    if images is None or (isinstance(images, str) and ":" in images and not Path(images).exists()):
        try:
            from anoplug.data import open_dataset

            ds = open_dataset(images or "toy:fabric", split="train", size=size)
            return ds, min(n, len(ds))
        except ImportError:  # toy dataset missing in this build: the kit's synthetic textures
            pass
    if isinstance(images, Dataset):
        return images, min(n, len(images))
    b = default_images(n, size) if images is None else as_batch(images, "images", n=n, size=size)
    return InMemoryDataset(b), len(b)


def _cached(source: Dataset) -> Dataset:
    """A dataset that renders (or decodes) each image once for every update of the explorer."""
    return source if isinstance(source, (InMemoryDataset, CachedSource)) else CachedSource(source)


def _png(array: np.ndarray) -> bytes:
    """PNG bytes of an HWC uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="png")
    return buf.getvalue()


def render_result(source: Batch, out: Batch) -> bytes:
    """One row per sample: input | generated | mask | overlay (PNG bytes), labelled by anomaly type."""
    from anoplug import viz

    rows = viz.triplets(source, out, with_overlay=True)
    return _png(viz.grid(rows, row_labels=list(out.label), col_labels=["input", "generated", "mask", "overlay"]))


# -- the explorer ---------------------------------------------------------------------------
def _is_slow(cls: type, spec: Any = None) -> bool:
    req = getattr(cls, "requires", None)
    return bool((spec is not None and getattr(spec, "needs_fit", False)) or (req is not None and (req.fit or req.weights))
                or getattr(cls, "category", "") in SLOW_CATEGORIES or getattr(cls, "level", "image") == "feature")


class Explorer(W.VBox):
    """The automatic explorer: controls, seed box, optional Generate button, status line, output grid.

    ``result`` holds the last generated :class:`Batch`, ``error`` the last callback error,
    ``reports`` the last reports of the ``evaluators`` (shown in the status line), ``calls``
    counts generations actually computed (cache hits excluded). ``update()`` regenerates now,
    bypassing the debounce.
    """

    def __init__(self, generator: Any, images: Any = None, *, fixed: dict | None = None, conditions: dict | None = None,
                 seed: int = 0, n: int = 4, size: int = 128, manual: bool | None = None, debounce_s: float = 0.15,
                 cache_size: int = 32, height: int = 420, show: Sequence[str] | None = None,
                 evaluators: Sequence[str] = (), spec: Any = None) -> None:
        if isinstance(generator, type):
            self.generator_cls, self._instance = generator, None
        else:
            self.generator_cls, self._instance = type(generator), generator
        cls = self.generator_cls
        self.params_cls: type[Params] = cls.Params
        self.fixed = dict(fixed or {})
        unknown = [k for k in self.fixed if k not in self.params_cls.model_fields]
        if unknown:
            raise ParamError(f"unknown parameter {unknown[0]!r} for {cls.name}; known: {', '.join(self.params_cls.model_fields)}")
        self.conditions = dict(conditions or {})
        source, count = explorer_source(images, n=n, size=size)
        self.source = _cached(source)
        self.indices = list(range(count))
        self.images = self.source.batch(self.indices)
        self.manual = _is_slow(cls, spec) if manual is None else bool(manual)
        self.cache = LRUCache(cache_size)
        self.result: Batch | None = None
        self.error: BaseException | None = None
        self.calls = 0
        self.png: bytes = b""
        from anoplug.registry import get_registry

        #: per-sample evaluators run on every new result (given the source images as ``normals``)
        self.evaluators = [get_registry().get_evaluator(e) for e in evaluators]
        self.reports: dict[str, Any] = {}

        self.controls = controls_for(self.params_cls, self.fixed, show=show)
        if self._instance is not None:  # start from the instance's current values
            for k, w in self.controls.items():
                v = getattr(self._instance.params, k)
                w.value = (", ".join(map(str, v)) if isinstance(v, (tuple, list)) else ("" if v is None else str(v))) \
                    if isinstance(w, W.Text) else v
        self.seed = W.IntText(value=int(seed), description="seed", layout=W.Layout(width="200px"))
        self.button = W.Button(description="Generate", button_style="primary", icon="play") if self.manual else None
        self.status = W.HTML(value="")
        self.image = W.Image(format="png", layout=W.Layout(height=f"{height}px", object_fit="contain"))
        box = W.Box([self.image], layout=W.Layout(height=f"{height + 8}px", overflow="hidden"))
        title = W.HTML(f"<b>{html.escape(cls.title or cls.name)}</b> <code>{html.escape(cls.name)}</code> "
                       f"· {html.escape(getattr(cls, 'category', ''))}" + (" · press Generate" if self.manual else ""))
        ctrl = W.GridBox(list(self.controls.values()) + [self.seed],
                         layout=W.Layout(grid_template_columns="repeat(2, 350px)", grid_gap="2px 8px"))
        footer = [self.button, self.status] if self.button is not None else [self.status]
        super().__init__([title, ctrl, W.HBox(footer), box])
        self.add_class("anoplug-explorer")

        self._schedule = debounce(0 if self.manual else debounce_s)(self._safe_update)
        if self.button is not None:
            self.button.on_click(lambda _b: self._safe_update())
        else:
            for w in [*self.controls.values(), self.seed]:
                w.observe(lambda _c: self._schedule(), names="value")
        self._safe_update()  # compute once on construction (interact_manual would not)

    # -- values ---------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """The current parameter values, unvalidated: a given instance's own values (defaults for a
        class), overridden by the controls, overridden by ``fixed``."""
        vals = self._instance.params.model_dump() if self._instance is not None else {}
        vals.update({k: _read_control(self.params_cls, k, w) for k, w in self.controls.items()})
        vals.update(self.fixed)
        return vals

    def make_generator(self, values: dict[str, Any]) -> Any:
        """A generator with ``values``: a fresh one from the class, or a shallow copy of a given (fitted) instance."""
        params = self.params_cls.parse(**values)
        if self._instance is None:
            return self.generator_cls(params)
        g = copy.copy(self._instance)
        g.params = params
        return g

    def _key(self, values: dict[str, Any]) -> tuple:
        return (json.dumps(values, sort_keys=True, default=str), int(self.seed.value))

    # -- generation -----------------------------------------------------------------
    def generate(self, values: dict[str, Any], seed: int) -> Batch:
        """Generate for the explorer's images (override for custom visualisations).

        Sample *i* comes from :func:`anoplug.driver.generate_batch`: the bytes ``anoplug
        generate`` writes for sample *i* of a run with this seed (paired source included).
        """
        gen = self.make_generator(values)
        if getattr(gen, "level", "image") == "feature":
            return _feature_preview(gen, self.images, seed)
        return generate_batch(gen, self.source, self.indices, seed=seed,
                              conditions=FixedConditions(self.conditions, self.indices) if self.conditions else None)

    def inputs(self, gen: Any) -> Batch:
        """What ``gen`` gets: sample *i* is built as the writer builds it (paired source included)."""
        conditions = FixedConditions(self.conditions, self.indices) if self.conditions else None
        return sample_inputs(gen, self.source, self.indices, conditions)

    def update(self) -> Batch:
        """Regenerate (or fetch from the cache) with the current values and redraw; raises on error."""
        values = self.values()
        key = self._key(values)
        hit = self.cache.get(key)
        t0 = time.perf_counter()
        if hit is None:
            self.status.value = "<i>generating…</i>"
            out = self.generate(values, int(self.seed.value))
            src = self.images if len(out) == len(self.images) else \
                self.images[[i % len(self.images) for i in range(len(out))]]  # e.g. a duplicated batch
            png = render_result(src, out)
            reports = {ev.name: ev.evaluate(out, normals=src) for ev in self.evaluators}
            self.calls += 1
            self.cache.put(key, (out, png, reports))
            note = f"generated in {time.perf_counter() - t0:.2f} s"
        else:
            out, png, reports = hit
            note = "from cache"
        self.result, self.png, self.reports, self.error = out, png, reports, None
        self.image.value = png
        n_anom = sum(lbl != "good" for lbl in out.label)
        scores = "".join(f" · {html.escape(k)} {m.value:.3g}" for r in reports.values() for k, m in list(r.metrics.items())[:4])
        self.status.value = f"<span style='color:#2a6'>{note} · {n_anom}/{len(out)} anomalous{scores}</span>"
        return out

    def _safe_update(self) -> None:
        try:
            self.update()
        except Exception as e:  # shown in the UI; re-raised in strict mode
            self.error = e
            self.status.value = (f"<span style='color:#c00'><b>{html.escape(type(e).__name__)}</b>: "
                                 f"{html.escape(str(e))}</span>")
            if strict():
                raise

    def set(self, **values: Any) -> Explorer:
        """Set several controls at once and regenerate once (handy in scripts and tests)."""
        for k, v in values.items():
            if k == "seed":
                self.seed.value = v
                continue
            if k not in self.controls:
                raise ParamError(f"unknown or fixed parameter {k!r}; controls: {', '.join(self.controls)}")
            with self.controls[k].hold_trait_notifications():
                self.controls[k].value = v
        self._safe_update()
        return self


def _feature_preview(gen: Any, images: Batch, seed: int) -> Batch:
    """Show a feature-level method: where and how strongly it moved the features, at image size.

    There is no anomalous *image* for these methods. The features are the method's own
    (``gen.features(images)`` when it has a backbone) or, failing that, the images pooled 4×;
    the "generated" column is the per-location |Δfeature| (normalised per row; the row label
    gives the scale), the mask the method's mask upsampled (or where |Δ| > 5 % of its peak when
    the method has none). A duplicated batch (SuperSimpleNet) gives one row per copy.
    """
    import torch.nn.functional as F

    with torch.no_grad():
        feats = gen.features(images.image) if callable(getattr(gen, "features", None)) else F.avg_pool2d(images.image, 4)
        if isinstance(feats, tuple):  # patch-feature methods (PBAS): (rows [B, h·w, D], (h, w))
            rows, (h, w) = feats
            feats = rows.reshape(rows.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
        new, mask = gen.generate_features(feats, seed=seed)
    base = feats.repeat(len(new) // len(feats), 1, 1, 1) if len(new) != len(feats) else feats
    delta = (new - base).abs().mean(1, keepdim=True)
    peak = delta.flatten(1).amax(1)
    delta = delta / peak.clamp_min(1e-8)[:, None, None, None]
    size = images.size
    img = F.interpolate(delta.expand(-1, 3, -1, -1), size=size, mode="nearest").clamp(0, 1)
    m = (delta > 0.05).float() if mask is None else (mask > 0).float()
    m = F.interpolate(m, size=size, mode="nearest")
    # the row label carries the scale that the per-row normalisation hides
    labels = [f"max|d| {float(peak[i]):.3g}" if bool(m[i].any()) else "good" for i in range(len(new))]
    return Batch(image=img.contiguous(), mask=m.contiguous(), label=labels,
                 meta=[{"method": gen.name, "seed": seed, "preview": "|delta feature| normalised"} for _ in labels])


def explore(name: Any, images: Any = None, *, seed: int = 0, n: int = 4, size: int = 128, manual: bool | None = None,
            conditions: dict | None = None, show: Sequence[str] | None = None, evaluators: Sequence[str] = (),
            debounce_s: float = 0.15, **fixed: Any) -> Any:
    """An interactive explorer for generator ``name`` (a registered name, a class, or a fitted instance).

    ``fixed`` parameters get no control; ``show`` limits the controls to those names (the
    others keep their defaults); ``conditions`` (``Batch.with_conditions`` keywords) ride on the
    images; ``evaluators``
    (per-sample ones, e.g. ``"mask-precision"``) score every result in the status line.
    """
    from anoplug.registry import get_registry

    reg = get_registry()
    spec = None
    if isinstance(name, str):
        spec = reg.spec("generators", name)
        target: Any = reg.generator_class(name)
        if target.requires.fit and target.pretrained:
            target = target.from_pretrained()  # a learned method by name: its shipped default checkpoint
        elif target.requires.fit:
            raise ValueError(f"{name!r} is a learned method: fit or load it first and pass the instance, "
                             f"e.g. explore(gen, images) with gen = anoplug.get_generator({name!r}); gen.fit(...)")
    else:
        target = name
    return Explorer(target, images, fixed=fixed, conditions=conditions, seed=seed, n=n, size=size, manual=manual,
                    debounce_s=debounce_s, show=show, evaluators=evaluators, spec=spec)


# -- side-by-side comparison -----------------------------------------------------------------
class Comparison(W.VBox):
    """One grid, one row per method, on the same images and seed; a seed box regenerates all rows."""

    def __init__(self, methods: Sequence[Any], images: Any = None, *, seed: int = 0, n: int = 3, size: int = 128,
                 height: int | None = None) -> None:
        from anoplug.registry import get_registry

        if not methods:
            raise ValueError("compare: give at least one method")
        source, count = explorer_source(images, n=n, size=size)
        self.source = _cached(source)
        self.indices = list(range(count))
        self.images = self.source.batch(self.indices)
        reg = get_registry()
        self.generators: dict[str, Any] = {}
        for m in methods:
            if isinstance(m, str):
                g = reg.get_generator(m)
            elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str):
                g = reg.get_generator(m[0], **dict(m[1]))
            else:
                g = m
            label = g.name if g.name not in self.generators else f"{g.name}#{len(self.generators)}"
            self.generators[label] = g
        self.results: dict[str, Batch] = {}
        self.error: BaseException | None = None
        self.png = b""
        self.seed = W.IntText(value=int(seed), description="seed", layout=W.Layout(width="200px"))
        self.status = W.HTML("")
        height = height or 40 + 150 * len(self.generators)  # fixed per grid: no jumping while it updates
        self.image = W.Image(format="png", layout=W.Layout(height=f"{height}px", object_fit="contain"))
        super().__init__([W.HBox([self.seed, self.status]), self.image])
        self.add_class("anoplug-compare")
        self.seed.observe(lambda _c: self._safe_update(), names="value")
        self._safe_update()

    def update(self) -> dict[str, Batch]:
        from anoplug import viz

        t0 = time.perf_counter()
        seed = int(self.seed.value)
        results = {k: generate_batch(g, self.source, self.indices, seed=seed) for k, g in self.generators.items()}
        cols = [c for i in range(len(self.images)) for c in (f"generated {i}", f"overlay {i}")]
        rows = [[t for tri in viz.triplets(self.images, out, with_overlay=True) for t in (tri[1], tri[3])]
                for out in results.values()]
        self.png = _png(viz.grid(rows, row_labels=list(results), col_labels=cols))
        self.image.value = self.png
        self.results, self.error = results, None
        self.status.value = f"{len(results)} methods in {time.perf_counter() - t0:.2f} s"
        return results

    def _safe_update(self) -> None:
        try:
            self.update()
        except Exception as e:
            self.error = e
            self.status.value = f"<span style='color:#c00'><b>{html.escape(type(e).__name__)}</b>: {html.escape(str(e))}</span>"
            if strict():
                raise


def compare(names: Sequence[Any], images: Any = None, *, seed: int = 0, n: int = 3, size: int = 128) -> Comparison:
    """One grid, one row per method (names, ``(name, params)`` pairs or generator instances)."""
    return Comparison(names, images, seed=seed, n=n, size=size)
