"""The ``bench`` and ``evaluate`` sub-commands, added to the ``anoplug`` CLI through the ``anoplug_commands`` hook.

    anoplug bench --generators draem,cutpaste,nsa --data 'toy:metal?difficulty=hard' --seeds 0,1,2 --out out/bench
    anoplug bench --preset asbench-hybrids --data 'toy:metal?difficulty=hard'
    anoplug evaluate --evaluator kid --generated out/gen/metal --real toy:metal
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "cmd_bench", "cmd_evaluate", "read_generated_tree", "BenchUsageError"]


class BenchUsageError(ValueError):
    """A bad ``bench`` / ``evaluate`` argument; the CLI prints it on one line and exits 2."""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(t) for t in _csv(text)]
    except ValueError:
        raise BenchUsageError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise BenchUsageError(f"{flag} must list non-negative integers, got {text!r}")
    return vals


def _floats(text: str, flag: str) -> list[float]:
    try:
        vals = [float(t) for t in _csv(text)]
    except ValueError:
        raise BenchUsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if any(not 0.0 <= v <= 1.0 for v in vals):
        raise BenchUsageError(f"{flag} values are probabilities in [0, 1], got {text!r}")
    return vals


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _params(items: list[str] | None, flag: str) -> dict[str, dict[str, Any]]:
    """``NAME.KEY=VALUE`` items -> {NAME: {KEY: VALUE}} (VALUE parsed as JSON when it is JSON)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        lhs, sep, rhs = item.partition("=")
        name, dot, key = lhs.rpartition(".")
        if not sep or not dot or not name or not key:
            raise BenchUsageError(f"{flag} {item!r} must look like NAME.PARAM=VALUE, e.g. downstream-utility.steps=500")
        out.setdefault(name, {})[key] = _value(rhs)
    return out


def _loads(items: list[str] | None) -> dict[str, str]:
    """``NAME=DIR`` items -> {NAME: DIR}."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, d = item.partition("=")
        if not sep or not name.strip() or not d.strip():
            raise BenchUsageError(f"--load {item!r} must look like NAME=DIR, e.g. anomalydiffusion=out/ad/{{category}}")
        out[name.strip()] = d.strip()
    return out


def _generators(args: argparse.Namespace) -> list[str]:
    """``--preset`` names first, then ``--generators`` (duplicates dropped)."""
    from anoplug_asbench.presets import PRESETS

    names: list[str] = []
    for preset in args.preset or []:
        if preset not in PRESETS:
            raise BenchUsageError(f"unknown --preset {preset!r}; known: {', '.join(PRESETS)}")
        names += PRESETS[preset]
    names += _csv(args.generators or "")
    if not names:
        raise BenchUsageError("bench needs --generators a,b,c or --preset NAME (e.g. --preset asbench-hybrids)")
    return list(dict.fromkeys(names))


def cmd_bench(args: argparse.Namespace) -> int:
    from anoplug_asbench.bench import BenchConfig, parse_data, run_bench

    data = [d for spec in args.data for d in parse_data(spec)]
    if args.size % 32:
        raise BenchUsageError(f"--size must be a multiple of 32 (the detector pools five times), got {args.size}")
    for flag, v in (("--n-train", args.n_train), ("--n-synthetic", args.n_synthetic)):
        if v < 1:
            raise BenchUsageError(f"{flag} must be at least 1, got {v}")
    cfg = BenchConfig(generators=_generators(args), data=data, load=_loads(args.load),
                      evaluators=_csv(args.evaluators) if args.evaluators else BenchConfig([], []).evaluators,
                      seeds=_ints(args.seeds, "--seeds"), out=args.out, size=args.size, n_train=args.n_train,
                      n_test=args.n_test, n_synthetic=args.n_synthetic,
                      ratios=_floats(args.ratios, "--ratios") if args.ratios else [],
                      pipelines=_csv(args.pipelines or ""),
                      generator_params=_params(args.gen_param, "--gen-param"),
                      evaluator_params=_params(args.eval_param, "--eval-param"), fit_steps=args.fit_steps,
                      use_cache=not args.no_cache)
    log = (lambda m: print(m, file=sys.stderr)) if args.verbose else None
    results = run_bench(cfg, progress=not args.quiet, log=log)
    out = Path(cfg.out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, plots in {out} ({results['seconds'] / 60:.1f} min)")
    return 0


def read_generated_tree(root: str | Path, size: int | None = None) -> tuple[Any, Any | None]:
    """(generated batch, source normals or None) from a tree written by ``anoplug generate``.

    Sources come from ``train/good/<source_index>.png`` when the writer copied them;
    otherwise they are ``None`` (evaluators that need them then say so).
    """
    from anoplug.data.writer import MANIFEST
    from anoplug.types import Batch

    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: --generated must be a category folder written by `anoplug generate`")
    recs = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not recs:
        raise BenchUsageError(f"{manifest} lists no samples")
    images = [root / r["image"] for r in recs]
    masks = [root / r["mask"] if r.get("mask") else None for r in recs]
    gen = Batch.from_paths(images, masks, size=size, label=[r["label"] for r in recs],
                           meta=[{"source": r.get("source"), "index": r["index"], "method": r.get("method"),
                                  # a mask-less method's record: mask-reading evaluators must refuse, not score it
                                  **({"provides_mask": False} if r.get("provides_mask") is False else {})}
                                 for r in recs])
    src_paths = [root / "train" / "good" / f"{int(r.get('source_index', -1)):06d}.png" for r in recs]
    sources = Batch.from_paths(src_paths, size=size) if all(p.is_file() for p in src_paths) else None
    return gen, sources


def cmd_evaluate(args: argparse.Namespace) -> int:
    from anoplug.registry import get_registry
    from anoplug_asbench.bench import _open, split_shots

    reg = get_registry()
    spec = reg.spec("evaluators", args.evaluator)
    params = {k: _value(v) for k, v in (p.partition("=")[::2] for p in args.param or [])}
    if any(not k for k in params):
        raise BenchUsageError("--param must look like NAME=VALUE")
    ev = reg.get_evaluator(args.evaluator, **params)
    generated, sources = read_generated_tree(args.generated, args.size)
    size = generated.image.shape[-1]
    kw: dict[str, Any] = {}
    if spec.kind == "per_sample":
        if sources is None:
            raise BenchUsageError(f"{args.evaluator} compares each sample with its source normal, but {args.generated} "
                                  "has no train/good copy of every source (regenerate with --n-train covering them)")
        kw["normals"] = sources
    elif args.real:
        normals = _open(args.real, "train", size, args.n_train)
        test = _open(args.real, "test", size, None)
        refs, held = split_shots(test.label)
        kw = {"normals": normals, "real": test[held] if spec.kind == "downstream" else test[refs or held]}
    else:
        raise BenchUsageError(f"{args.evaluator} needs --real SCHEME:CATEGORY (the real data to compare against)")
    report = ev.evaluate(generated, **kw)
    text = json.dumps(report.to_dict(), indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    for name, m in report.metrics.items():
        std = "" if m.std is None else f" ± {m.std:.4f}"
        print(f"{name}: {m.value:.4f}{std} ({m.direction} is better) — {m.description}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and ``evaluate`` to the main parser's sub-commands, each with its handler."""
    sp = sub.add_parser("bench", help="generators x evaluators on real data: utility, fidelity, diversity, masks",
                        description="Run every generator on each data category, evaluate, and write results.json, "
                                    "results.md and plots (the ASBench protocol on CPU-sized settings).")
    sp.add_argument("--generators", default="", help="comma-separated names; a+b is the equal hybrid of a and b; "
                    "a learned member may be NAME@DIR (a saved one)")
    sp.add_argument("--preset", action="append", help="a named generator set: asbench-hybrids (ASBench's 11 hybrids of "
                    "fractal, draem, memseg, anomalydiffusion) or asbench-hybrid-study (the 4 members, then the 11)")
    sp.add_argument("--data", required=True, action="append",
                    help="SCHEME:CATEGORY[,CATEGORY...][?OPTIONS], e.g. toy:metal,wood or 'toy:metal?difficulty=hard' "
                         "(the calibrated toy benchmark)")
    sp.add_argument("--load", action="append", help="NAME=DIR: use a saved learned generator instead of fitting it "
                    "on the reference shots ({category} in DIR is expanded; repeatable)")
    sp.add_argument("--evaluators", default="", help="comma-separated (default: mask-precision,ic-lpips,kid,downstream-utility)")
    sp.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    sp.add_argument("--ratios", default="", help="ASBench synthetic probabilities p to sweep, e.g. 0.25,0.5,1")
    sp.add_argument("--pipelines", default="", help="ASBench detection pipelines to train for downstream evaluators, "
                    "each at its CPU scale: ad-unet,draem,destseg,memseg (default: the one CPU-profile detector)")
    sp.add_argument("--out", default="out/bench", help="output folder (default out/bench)")
    sp.add_argument("--size", type=int, default=128, help="image side (multiple of 32; default 128)")
    sp.add_argument("--n-train", type=int, default=32, help="normal training images per category (default 32)")
    sp.add_argument("--n-test", type=int, default=None, help="real test images per category (default: all)")
    sp.add_argument("--n-synthetic", type=int, default=64, help="synthetic anomalies per generator and seed (default 64)")
    sp.add_argument("--gen-param", action="append", help="GENERATOR.PARAM=VALUE (repeatable)")
    sp.add_argument("--eval-param", action="append", help="EVALUATOR.PARAM=VALUE (repeatable), e.g. kid.subsets=50")
    sp.add_argument("--fit-steps", type=int, default=None, help="training steps for generators that need fitting "
                    "(default: the bench's CPU profile, e.g. anomalydiffusion 500 + 150 per defect type)")
    sp.add_argument("--no-cache", action="store_true", help="regenerate even when a cached set exists")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--verbose", action="store_true", help="log every evaluation to stderr")
    sp.set_defaults(handler=cmd_bench)

    ep = sub.add_parser("evaluate", help="run one evaluator on a generated tree against real data")
    ep.add_argument("--evaluator", required=True, help="evaluator name, e.g. kid, ic-lpips, mask-precision")
    ep.add_argument("--generated", required=True, help="category folder written by `anoplug generate` (with manifest.jsonl)")
    ep.add_argument("--real", default="", help="real data SCHEME:CATEGORY (its train normals and test defects)")
    ep.add_argument("--param", action="append", help="evaluator parameter NAME=VALUE (repeatable)")
    ep.add_argument("--size", type=int, default=None, help="resize generated images to this side")
    ep.add_argument("--n-train", type=int, default=32, help="normal images taken from --real (default 32)")
    ep.add_argument("--out", default="", help="also write the report as JSON here")
    ep.set_defaults(handler=cmd_evaluate)
