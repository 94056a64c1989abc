"""The ``anoplug`` command line.

User errors (unknown names, bad parameters, bad data paths) exit with status 2 and one
line naming the bad value; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, FileNotFoundError, FileExistsError,
                                               NotADirectoryError, PermissionError)


class UserError(ValueError):
    """A mistake in what the user asked for; reported as one line, exit status 2."""


def _registry():
    from anoplug.registry import get_registry

    return get_registry()


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))


# -- plugins / list / info / datasets ----------------------------------------------------------
def cmd_plugins(args: argparse.Namespace) -> int:
    reg = _registry()
    rows = [st.to_dict() for st in reg.status.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = []
    for r in rows:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["provides"].items()) or "-"
        status = "ok" if r["status"] == "ok" else f"ERROR {r['error']}"
        table.append([r["name"], r["distribution"], r["version"], provides, status])
    _print_table(table, ["plugin", "distribution", "version", "provides", "status"])
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from anoplug.specs import CATEGORIES

    reg = _registry()
    tags = sorted({t for spec in reg.specs("generators").values() for t in spec.tags})
    if args.category and args.category not in CATEGORIES and args.category not in tags:
        raise UserError(f"unknown category or tag {args.category!r}; categories: {', '.join(CATEGORIES)}; "
                        f"tags: {', '.join(tags)}")
    rows = []
    for name, spec in reg.specs("generators").items():
        if args.category and spec.category != args.category and args.category not in spec.tags:
            continue
        rows.append([name, spec.category, "yes" if spec.needs_fit else "no", spec.title, reg.owner("generators", name)])
    if args.json:
        print(json.dumps([dict(zip(["name", "category", "needs_fit", "title", "distribution"], r)) for r in rows], indent=2))
        return 0
    _print_table(rows, ["generator", "category", "fit", "title", "distribution"])
    evs = reg.specs("evaluators")
    if evs and not args.category:
        print()
        _print_table([[n, s.kind, s.title, reg.owner("evaluators", n)] for n, s in evs.items()],
                     ["evaluator", "kind", "title", "distribution"])
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from anoplug.params import describe_field

    reg = _registry()
    if args.name in reg.specs("evaluators") and args.name not in reg.specs("generators"):
        cls = reg.spec("evaluators", args.name).load()
    else:
        cls = reg.generator_class(args.name)  # unknown names raise, listing what is installed
    print(f"{cls.name} — {cls.title}")
    if getattr(cls, "paper", None) is not None and cls.paper.title:
        p = cls.paper
        print(f"paper:     {p.title} ({p.venue} {p.year})")
        print(f"url:       {p.url}")
        if p.code_url:
            print(f"code:      {p.code_url}")
    if hasattr(cls, "category"):
        print(f"category:  {cls.category}" + (f" (tags: {', '.join(cls.tags)})" if cls.tags else ""))
        print(f"level:     {cls.level}")
        req = cls.requires
        needs = [k for k in ("fit", "anomalies", "text", "depth", "object_mask") if getattr(req, k)]
        print(f"requires:  {', '.join(needs) or 'nothing'}" + (f"; weights: {req.weights}" if req.weights else ""))
    print("parameters:")
    rows = []
    for fname in cls.Params.model_fields:
        d = describe_field(cls.Params, fname)
        if "choices" in d:
            rng = " | ".join(map(str, d["choices"]))
        elif "min" in d or "max" in d:
            rng = f"[{d.get('min', '-inf')}, {d.get('max', 'inf')}]"
        else:
            rng = d["type"]
        rows.append([fname, repr(d["default"]), rng, d["description"]])
    _print_table(rows, ["name", "default", "range", "description"])
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    reg = _registry()
    rows = [[s.scheme or n, s.title, s.description, reg.owner("datasets", n)] for n, s in reg.specs("datasets").items()]
    _print_table(rows, ["scheme", "title", "usage", "distribution"])
    try:
        from anoplug.data.toy import CATEGORIES as TOY
    except ImportError:  # pragma: no cover - toy dataset missing only in broken installs
        return 0
    print("\nembedded toy categories (--data toy:NAME):")
    trows = []
    for name, info in TOY.items():
        kind = info.get("kind", "") if isinstance(info, dict) else getattr(info, "kind", str(info))
        defects = info.get("defects", ()) if isinstance(info, dict) else getattr(info, "defects", ())
        trows.append([name, kind, ", ".join(defects)])
    _print_table(trows, ["category", "kind", "real defects in test split"])
    return 0


# -- generate / demo ------------------------------------------------------------------------------
def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise UserError(f"parameter {p!r} must look like NAME=VALUE")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _build_generator(name: str, param_pairs: Sequence[str], load: str | None = None) -> Any:
    reg = _registry()
    cls = reg.generator_class(name)
    if load:
        gen = cls.load(load)
        if param_pairs:
            raise UserError("--param cannot be combined with --load (the saved parameters are used)")
        return gen
    params = cls.Params.from_strings(_parse_params(param_pairs))
    return cls(params)


def cmd_generate(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UserError(f"-n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.size < 16 or args.size > 4096:
        raise UserError(f"--size must be in [16, 4096], got {args.size}")
    if args.seed < 0:
        raise UserError(f"--seed must be non-negative, got {args.seed}")
    if args.replay:
        return _replay(args)
    if not args.name or not args.data:
        raise UserError("generate needs a generator NAME and --data (or --replay MANIFEST)")
    gen = _build_generator(args.name, args.param, args.load)
    from anoplug.data import open_dataset
    from anoplug.data.inputs import ConditionSource
    from anoplug.data.writer import write_generated

    if gen.level != "image":
        raise UserError(f"{args.name} is a feature-level method: it produces no images to write "
                        "(use it through its detector, see `anoplug info`)")
    conditions = ConditionSource(masks=args.masks, boxes=args.boxes, prompt=args.prompt)
    for name in gen.requires.conditions:
        if name not in conditions.names() and not (name == "source_image" and gen.requires.paired_source):
            flag = {"target_mask": "--masks DIR", "boxes": "--boxes FILE", "prompt": "--prompt TEXT"}.get(name, name)
            raise UserError(f"{args.name} needs conditions.{name}: pass {flag}")
    source = open_dataset(args.data, split="train", size=args.size)
    if gen.requires.fit and not gen.is_fitted:
        if not args.fit:
            raise UserError(f"{args.name} must be fitted first: pass --fit (trains on --data) or --load DIR")
        t0 = time.perf_counter()
        gen.fit(source.all(), steps=args.fit_steps)
        print(f"fitted {args.name} in {time.perf_counter() - t0:.1f} s")
    summary = write_generated(gen, source, args.out, n=args.n, seed=args.seed, batch_size=args.batch_size,
                              n_train=args.n_train, progress=not args.quiet, conditions=conditions or None,
                              data=args.data)
    print(f"wrote {summary.written} new samples ({summary.skipped} already present) to {summary.root}")
    print(f"manifest: {summary.manifest}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    """``generate --replay MANIFEST --out DIR``: the run's generator, data and draws come from the manifest."""
    from anoplug.data.writer import replay_manifest

    given = [flag for flag, v in (("NAME", args.name), ("--data", args.data), ("--param", args.param),
                                  ("--masks", args.masks), ("--boxes", args.boxes), ("--prompt", args.prompt),
                                  ("--fit", args.fit)) if v]
    if given:
        raise UserError(f"--replay takes everything from the manifest; drop {', '.join(given)}")
    summary = replay_manifest(args.replay, args.out, load=args.load, batch_size=args.batch_size,
                              progress=not args.quiet)
    print(f"replayed {summary.written} samples ({summary.skipped} already present) to {summary.root}")
    print(f"manifest: {summary.manifest}")
    return 0


def demo_generators(reg: Any) -> list[str]:
    """Installed image-level generators that need no training (what ``make demo`` shows)."""
    names = []
    for name, spec in reg.specs("generators").items():
        if spec.needs_fit:
            continue
        try:
            cls = reg.generator_class(name)
        except Exception as e:  # a broken plugin must not stop the demo
            print(f"skipping {name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        if cls.level == "image" and not cls.requires.fit and not cls.requires.text and not cls.requires.depth:
            names.append(name)
    return names


def cmd_demo(args: argparse.Namespace) -> int:
    from anoplug import viz
    from anoplug.data import open_dataset
    from anoplug.data.writer import write_generated

    reg = _registry()
    out = Path(args.out)
    names = demo_generators(reg)
    if not names:
        raise UserError("no generators installed: install a plugin (e.g. pip install -e plugins/anoplug-draem)")
    source = open_dataset(f"toy:{args.category}", split="train", size=args.size)
    results, failures = {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            fields = reg.generator_class(name).Params.model_fields
            gen = reg.get_generator(name, **({"probability": 1.0} if "probability" in fields else {}))
            summary = write_generated(gen, source, out / name, n=args.n, seed=args.seed, batch_size=args.n,
                                      n_train=min(args.n, 8), progress=False)
            normals = source.batch([i % len(source) for i in range(4)])
            results[name] = (normals, gen.generate(normals, seed=args.seed))
            print(f"{name:>16}: {summary.written + summary.skipped} samples in {summary.root} "
                  f"({time.perf_counter() - t0:.1f} s)")
        except Exception as e:  # show every method that works; report the rest
            failures[name] = f"{type(e).__name__}: {e}"
            print(f"{name:>16}: FAILED {failures[name]}", file=sys.stderr)
    if results:
        sheet = viz.save_png(viz.contact_sheet(results), out / "contact_sheet.png")
        print(f"\ndataset:       {out.resolve()}/<method>/{args.category}/")
        print(f"contact sheet: {sheet.resolve()}")
    return 1 if failures else 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from anoplug.scaffold import new_plugin

    root = new_plugin(args.name, args.dir, title=args.title, category=args.category, learned=args.learned)
    print(f"created {root}\nnext: pip install -e {root} && pytest {root}")
    return 0


# -- entry ------------------------------------------------------------------------------------
def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    from anoplug._version import __version__

    p = argparse.ArgumentParser(prog="anoplug", description="Synthetic anomaly generation for visual inspection.")
    p.add_argument("--version", action="version", version=f"anoplug {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}

    sp = sub.add_parser("plugins", help="installed plugins, what they provide, and errors")
    sp.add_argument("--json", action="store_true")
    handlers["plugins"] = cmd_plugins

    sp = sub.add_parser("list", help="registered generators (and evaluators)")
    sp.add_argument("--category", help="only this category (or tag)")
    sp.add_argument("--json", action="store_true")
    handlers["list"] = cmd_list

    sp = sub.add_parser("info", help="paper, parameters and requirements of a method")
    sp.add_argument("name")
    handlers["info"] = cmd_info

    sp = sub.add_parser("datasets", help="dataset schemes and the embedded toy categories")
    handlers["datasets"] = cmd_datasets

    sp = sub.add_parser("generate", help="write an MVTec-layout anomaly dataset (or replay one from its manifest)")
    sp.add_argument("name", nargs="?", help="generator name (see `anoplug list`)")
    sp.add_argument("--data", help="toy:CATEGORY | mvtec:PATH/CATEGORY | visa:PATH/CATEGORY | folder:PATH")
    sp.add_argument("--out", required=True, help="output directory")
    sp.add_argument("-n", type=int, default=100, help="number of generated samples (default 100)")
    sp.add_argument("--seed", type=int, default=0, help="master seed; sample i is seeded from (seed, i)")
    sp.add_argument("--size", type=int, default=256, help="square image side (default 256)")
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--n-train", type=int, default=None, help="normal images copied to train/good")
    sp.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="method parameter")
    sp.add_argument("--load", help="load a saved (fitted) generator from this directory")
    sp.add_argument("--fit", action="store_true", help="fit a learned generator on --data first")
    sp.add_argument("--fit-steps", type=int, default=None)
    sp.add_argument("--masks", metavar="DIR", help="target masks, one image per sample (sorted, cycled): where defects go")
    sp.add_argument("--boxes", metavar="FILE", help="JSON list with one list of [label, x1, y1, x2, y2] per sample (cycled)")
    sp.add_argument("--prompt", metavar="TEXT", help="text prompt for every sample")
    sp.add_argument("--replay", metavar="MANIFEST", help="regenerate the dataset of this manifest from its recorded draws")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    handlers["generate"] = cmd_generate

    sp = sub.add_parser("demo", help="the main job: every training-free generator on the embedded data")
    sp.add_argument("--out", default="out/demo")
    sp.add_argument("--category", default="metal")
    sp.add_argument("-n", type=int, default=16)
    sp.add_argument("--size", type=int, default=256)
    sp.add_argument("--seed", type=int, default=0)
    handlers["demo"] = cmd_demo

    sp = sub.add_parser("new-plugin", help="scaffold a plugin distribution that passes the conformance kit")
    sp.add_argument("name", help="method name, e.g. my-method")
    sp.add_argument("--dir", default="plugins", help="parent folder (default plugins/)")
    sp.add_argument("--title", default="")
    sp.add_argument("--category", default="cutpaste")
    sp.add_argument("--learned", action="store_true", help="a learned method (fit: modules, training step, optimisers)")
    handlers["new-plugin"] = cmd_new_plugin

    # Plugins add their own verbs (anoplug-asbench: bench, evaluate); a failing one shows in `anoplug plugins`.
    handlers.update(_registry().add_commands(sub))
    return p, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("ANOPLUG_DEBUG", "") not in ("", "0")
    try:
        return int(handlers[args.command](args) or 0)
    except KeyboardInterrupt:
        print("anoplug: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"anoplug: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if debug:
            raise
        print(f"anoplug: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
