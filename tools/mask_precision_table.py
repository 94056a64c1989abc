"""The cross-plugin mask-precision table: does each generator's mask say where its image changed?

Runs the metrics plugin's ``mask-precision`` evaluator over **every registered image-level
generator** on the same kind of toy inputs and writes ``docs/results/mask_precision.json`` and
``docs/results/mask_precision.md``:

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python tools/mask_precision_table.py

Protocol (the same for every row, so rows can be compared):

- inputs: ``n`` normals of ``toy:CATEGORY``, rendered with seed 1 (``ToyDataset(..., seed=1)``) so that no
  shipped checkpoint (trained on the seed-0 renders) has seen them; sample *i* is made from normal *i*
  through the host's driver (:func:`anoplug.driver.generate_batch`, the bytes ``anoplug generate``
  writes), one torch thread, seed ``--seed``;
- category: the one the generator's shipped checkpoint was trained on (:data:`CHECKPOINT_DATA`),
  ``surface3d`` for generators that require depth, else ``metal``;
- training-free generators (procedural ones, and those on a bundled base model) run with their
  defaults; learned ones load their **first-choice shipped checkpoint** with ``from_pretrained``
  (``metal`` where offered, else the first; never fitted here); a generator whose default takes more
  than ~20 s per image on CPU runs with its ``smoke_params`` (:data:`NON_DEFAULTS`, which also holds
  the one data-dependent override; each is said in the table);
- skipped, and listed: feature-level generators (no image, no pixel mask), learned generators that
  ship no weights, generators that returned no non-empty mask (image-level labels only), and any
  generator that fails to load or run (with the error's first line).

The generator list is read from the registry at run time, so a re-run includes newly installed plugins.
Generators that regenerate the whole image (diffusion from noise, GANs that re-render) show high
leakage by construction; the ``outside the mask`` column says what each one promises there.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "docs" / "results"
METRICS = ("leakage", "coverage", "change_iou", "boundary_f1", "leakage_mae")

#: toy category a shipped checkpoint was trained on, where its name is not already a toy category.
CHECKPOINT_DATA: dict[str, str] = {"toy-carpet": "carpet", "textures": "fabric",
                                   "toy-holdout-nut": "nut",  # Anomagic: the held-out category is its zero-shot target
                                   "toy-defects": "metal"}  # AnomalyControl: trained on several; metal among them
#: checkpoints trained on a plugin's own data, not a host toy category: (label, module, normals(n, size=, seed=)).
PLUGIN_DATA: dict[str, tuple[str, str, str]] = {"elcells": ("anoplug_pdig.elcells", "anoplug_pdig.elcells", "normals")}
#: generators not run at their defaults, with why: those whose default takes well over ~20 s per image
#: here (README numbers) run with their ``smoke_params`` (``None``), or the named override where the class
#: declares none; MemSeg's default grey-threshold foreground finds no foreground on the toy textures.
NON_DEFAULTS: dict[str, tuple[dict[str, Any] | None, str, str]] = {
    "anostyler": (None, "smoke_params", "its default optimises a fresh U-Net per image, ≈ 75 s/image (README)"),
    "anomalyany": ({"preset": "cpu"}, "preset=cpu", "declares no smoke_params; its paper preset takes ≈ 18.5 CPU-s "
                   "per image, minutes of wall time on this shared machine (README)"),
    "memseg": ({"foreground": "none"}, "texture setting", "its default foreground (grey level <= 100) is empty on "
               "toy:metal, so no sample got a mask; foreground='none' is its documented setting for textures"),
}
#: a prompt per category for generators that require ``conditions.prompt``.
PROMPT = "a {material} with a {defect}"
#: what a generator does outside its mask when it does not declare ``preserves_outside_mask``.
OUTSIDE_NOTES: dict[str, str] = {
    "seas": "regenerates the whole image (start latent noised to t=1500)",
    "glass-ddpm": "samples the whole image from noise",
    "anogen": "whole image shifts under CFG (README)",
    "anomalyany": "diffusion edit of the whole latent",
    "defect-gan": "soft alpha composition",
    "dt-gan": "re-renders, then composites",
    "fractal": "blend changes a few levels",
    "nsa": "Poisson blending spreads the change",
    "bboxdiffusion": "diffusion of the whole latent",
    "hybrid": "depends on the member drawn",
    "anodapter": "image and mask both drawn from noise (vs its empty-mask twin: notebook 03 §4)",
    "anomagic": "known region pasted in the latent; the VAE decode moves every pixel",
    "cagen": "latent fusion outside the mask; the VAE decode moves every pixel",
    "anomalycontrol": "Gaussian-blurred composite: a thin ring around the mask",
}


@dataclass
class Row:
    """One generator's line of the table (``status`` ``ok``) or its reason for being left out."""

    generator: str
    status: str  # ok | skipped
    reason: str = ""
    kind: str = ""  # training-free | learned
    checkpoint: str = ""
    data: str = ""
    params: str = "default"
    params_why: str = ""
    outside: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)
    anomalous: int = 0
    seconds: float = 0.0


def _category_for(cls: Any) -> tuple[str, str]:
    """(checkpoint, toy category): the shipped checkpoint's own category, else surface3d for depth, else metal."""
    ckpts = list(getattr(cls, "pretrained", {}) or {})
    if ckpts:
        from anoplug.data.toy import CATEGORIES

        ck = "metal" if "metal" in ckpts else ckpts[0]  # metal: the procedural rows' inputs, where offered
        if ck in PLUGIN_DATA:
            return ck, ck
        cat = CHECKPOINT_DATA.get(ck, ck)
        if cat not in CATEGORIES:
            raise ValueError(f"checkpoint {ck!r}: no known toy category (add it to CHECKPOINT_DATA)")
        return ck, cat
    return "", ("surface3d" if cls.requires.depth else "metal")


def _params_for(name: str, cls: Any) -> tuple[dict[str, Any], str, str]:
    """(parameters, their label, why): the defaults unless the default is too slow for a table run."""
    if name not in NON_DEFAULTS:
        return {}, "default", ""
    override, label, why = NON_DEFAULTS[name]
    params = dict(cls.smoke_params) if override is None else dict(override)
    return params, f"{label} `{json.dumps(params, separators=(',', ':'))}`", why


def _conditions(cls: Any, category: str, n: int) -> dict[str, Any] | None:
    if "prompt" not in cls.requires.conditions:
        return None
    from anoplug.data.toy import CATEGORIES

    info = CATEGORIES[category]
    prompts = [PROMPT.format(material=info.get("material", category), defect=info["defects"][i % len(info["defects"])])
               for i in range(n)]
    return {"prompt": prompts}


def _outside(name: str, cls: Any) -> str:
    if cls.preserves_outside_mask:
        return "kept (declared, kit-checked)"
    return OUTSIDE_NOTES.get(name, "not guaranteed")


def _first_line(e: BaseException) -> str:
    text = str(e).replace(str(REPO) + "/", "").strip().splitlines()  # repo-relative paths in the committed file
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


def measure(name: str, *, size: int = 64, n: int = 16, seed: int = 0,
            normals_for: Callable[[str, int, int], Any] | None = None) -> Row:
    """One row: build (or load) ``name``, generate ``n`` samples from ``n`` normals, evaluate mask precision."""
    import torch

    import anoplug
    from anoplug.data.inputs import InMemoryDataset, source_indices
    from anoplug.driver import generate_batch
    from anoplug.registry import get_registry

    reg = get_registry()
    try:
        cls = reg.generator_class(name)
    except Exception as e:  # noqa: BLE001 - a broken plugin is a row, not a crash
        return Row(name, "skipped", f"does not load: {_first_line(e)}")
    if getattr(cls, "level", "image") != "image":
        return Row(name, "skipped", "feature-level (perturbs backbone features; no image or pixel mask)")
    learned = bool(reg.spec("generators", name).needs_fit or cls.requires.fit)
    if learned and not cls.pretrained:
        return Row(name, "skipped", "learned, ships no weights")
    try:
        ckpt, cat = _category_for(cls)
    except ValueError as e:
        return Row(name, "skipped", str(e))
    params, label, why = _params_for(name, cls)
    data = PLUGIN_DATA[cat][0] if cat in PLUGIN_DATA else f"toy:{cat}"
    row = Row(name, "ok", kind="learned" if learned else "training-free", checkpoint=ckpt, data=data,
              params=label, params_why=why, outside=_outside(name, cls))
    try:
        normals = (normals_for or _toy_normals)(cat, size, n)
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        if learned:
            gen = cls.from_pretrained(ckpt)
            if params:
                gen.params = gen.Params(**{**gen.params.model_dump(), **params})  # generation-time settings
        else:
            gen = anoplug.get_generator(name, **params)
        if not gen.mask_provided():
            return Row(name, "skipped", "provides no mask (image-level label only, by design)", row.kind, ckpt, data,
                       label, why)
        pool = InMemoryDataset(normals)
        out = generate_batch(gen, pool, range(n), seed=seed, conditions=_conditions(cls, cat, n))
        row.seconds = time.perf_counter() - t0
        source = pool.batch(source_indices(range(n), len(pool)))
        report = anoplug.get_evaluator("mask-precision").evaluate(out, normals=source)
    except Exception as e:  # noqa: BLE001
        return Row(name, "skipped", f"failed: {_first_line(e)}", row.kind, ckpt, data, label, why)
    row.anomalous = int((out.mask.flatten(1).amax(1) >= 0.5).sum())
    if row.anomalous == 0:
        row.status, row.reason = "skipped", f"returned no non-empty mask in {n} samples (image-level label only?)"
        return row
    row.metrics = {k: (None if not math.isfinite(report.metrics[k].value) else round(report.metrics[k].value, 4))
                   for k in METRICS}
    return row


def _toy_normals(category: str, size: int, n: int) -> Any:
    """``n`` fresh normals (seed-1 renders of the train split: never seen by a seed-0-trained checkpoint)."""
    from anoplug.data.toy import ToyDataset

    if category in PLUGIN_DATA:
        import importlib

        _, module, fn = PLUGIN_DATA[category]
        return getattr(importlib.import_module(module), fn)(n, size=size, seed=1)

    return ToyDataset(category, "train", size=size, seed=1, length=n).batch(range(n))


def build_table(names: Sequence[str] | None = None, *, size: int = 64, n: int = 16, seed: int = 0,
                normals_for: Callable[[str, int, int], Any] | None = None,
                log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Every registered generator (or ``names``), measured or listed as skipped, plus the run's settings."""
    from anoplug.registry import get_registry

    names = sorted(get_registry().specs("generators")) if names is None else list(names)
    t0 = time.perf_counter()
    rows = []
    for name in names:
        row = measure(name, size=size, n=n, seed=seed, normals_for=normals_for)
        if log:
            log(f"{name:24s} {row.status:8s} {row.seconds:7.1f}s {row.reason or row.metrics}")
        rows.append(row)
    import torch

    return {"protocol": {"size": size, "n": n, "seed": seed, "change_threshold": 2 / 255, "boundary_tolerance": 2,
                         "inputs": "toy:CATEGORY train split rendered with seed 1, sample i from normal i",
                         "threads": 1},
            "environment": {"machine": platform.machine(), "torch": torch.__version__},
            "total_seconds": round(time.perf_counter() - t0, 1),
            "rows": [asdict(r) for r in rows]}


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown(results: dict[str, Any]) -> str:
    """The table users read: measured rows, then the skipped generators with their reason."""
    p = results["protocol"]
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    skipped = [r for r in results["rows"] if r["status"] != "ok"]
    lines = [f"{p['n']} samples per generator at {p['size']}², seed {p['seed']}, one torch thread; "
             f"a pixel changed when a channel moved by > 2/255; boundary F1 within {p['boundary_tolerance']} px. "
             "Leakage ↓, coverage ↑, change IoU ↑, boundary F1 ↑ (means over the samples with a non-empty mask).",
             "",
             "| generator | kind | data | params | leakage ↓ | coverage ↑ | change IoU ↑ | boundary F1 ↑ | "
             "anomalous / n | s / image | outside the mask |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        m = r["metrics"]
        kind = r["kind"] + (f" (`{r['checkpoint']}`)" if r["checkpoint"] else "")
        lines.append(f"| `{r['generator']}` | {kind} | {r['data']} | {r['params']} | {_fmt(m['leakage'])} | "
                     f"{_fmt(m['coverage'])} | {_fmt(m['change_iou'])} | {_fmt(m['boundary_f1'])} | "
                     f"{r['anomalous']} / {p['n']} | {r['seconds'] / p['n']:.2f} | {r['outside']} |")
    slow = [r for r in ok if r["params_why"]]
    if slow:
        lines += ["", "Not at their defaults:", ""]
        lines += [f"- `{r['generator']}`: {r['params_why']}" for r in slow]
    if skipped:
        lines += ["", "Not in the table:", ""]
        lines += [f"- `{r['generator']}`: {r['reason']}" for r in skipped]
    lines += ["", f"Whole run: {results['total_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, choices=(32, 64, 128))
    ap.add_argument("-n", type=int, default=16, help="samples per generator")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated generator names (default: every registered one)")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.only.split(",") if s.strip()] or None
    results = build_table(names, size=args.size, n=args.n, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mask_precision.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "mask_precision.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
