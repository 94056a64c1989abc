"""The ``anoplug`` command line.

User errors (unknown names, bad parameters, bad data paths) exit with status 2 and one
line naming the bad value; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, FileNotFoundError, FileExistsError,
                                               NotADirectoryError, PermissionError)
#: OS errors that describe the user's environment (disk full, read-only, no permission, bad path): exit 2
ENVIRONMENT_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOENT", "EEXIST", "ENOTDIR", "EISDIR", "ENAMETOOLONG",
    "EFBIG", "ELOOP", "ENOTEMPTY", "EMFILE", "ENFILE", "EIO") if hasattr(errno, n))
#: errors raised by name in modules the CLI does not import up front; the user's to fix: exit 2
USER_ERROR_NAMES = frozenset({"PluginError", "NotFittedError", "DecompressionBombError", "UnpicklingError"})
#: skip the up-front memory and disk estimates of ``generate`` (when they are wrong for your machine)
NO_RESOURCE_CHECK = "ANOPLUG_NO_RESOURCE_CHECK"


#: the ``generate`` flag that sets each per-sample condition
CONDITION_FLAGS = {"target_mask": "--masks DIR", "boxes": "--boxes FILE", "prompt": "--prompt TEXT",
                   "defect_type": "--defect-type NAME[,NAME...]", "references": "--references DIR"}


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
        cls = reg.load_spec("evaluators", args.name)
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
        if req.uses:
            flags = {**CONDITION_FLAGS, "source_image": "paired automatically"}
            shown = [f"{c} ({'required' if c in req.conditions else 'optional'}; {flags.get(c, 'Python only')})"
                     for c in req.uses if c not in ("source_object_mask", "reference_masks", "reference_captions")]
            print(f"conditions: {', '.join(shown)}")
        if not getattr(cls, "provides_mask", True):
            print("masks:     none by default (image-level labels: no ground_truth files, \"mask\": null)")
        if req.reads_depth:
            print(f"depth:     batch.depth ({'required' if req.depth else 'optional'}; the dataset's own, or --depth DIR)")
        if getattr(cls, "pretrained", None):
            print(f"shipped:   {', '.join(cls.pretrained)} (the first is used without --fit/--load; "
                  "pick one with --pretrained NAME)")
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
    try:
        from anoplug.data.toy import DIFFICULTIES
    except ImportError:  # pragma: no cover - an older toy module
        return 0
    print("\ntoy defect difficulty (--data 'toy:NAME?difficulty=hard'; plain toy:NAME is easy, the original data;\n"
          "knobs override a setting: 'toy:NAME?difficulty=hard&contrast=0.2'; the benchmark's default is hard):")
    _print_table([[name, f"{d.contrast:g}", f"{d.scale:g}", f"{d.width:g}"] for name, d in DIFFICULTIES.items()],
                 ["difficulty", "contrast", "scale", "width"])
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


def _build_generator(name: str, param_pairs: Sequence[str], load: str | None = None,
                     pretrained: str | None = None) -> Any:
    """The generator the flags ask for: saved (``--load``), shipped (``--pretrained``) or new from ``--param``."""
    reg = _registry()
    cls = reg.generator_class(name)
    if load or pretrained:
        overrides = _parse_params(param_pairs)
        if overrides:  # only what is read at generation time; the saved parameters describe the weights
            names = cls.generation_param_names()
            other = [k for k in overrides if k not in names]
            if other:
                flag = "--load" if load else "--pretrained (or a shipped default)"
                allowed = ", ".join(names) or "none"
                raise UserError(f"--param {other[0]} cannot be combined with {flag}: the saved parameters describe "
                                f"the trained model (generation-time parameters of {name}: {allowed})")
            from anoplug.params import coerce_value

            overrides = {k: coerce_value(v, cls.Params.model_fields[k].annotation) for k, v in overrides.items()}
        if load:
            gen = cls.load(load)
        else:
            try:
                gen = cls.from_pretrained(pretrained)
            except ValueError as e:
                raise UserError(f"--pretrained: {e}") from e
        return gen.with_generation_params(**overrides) if overrides else gen
    params = cls.Params.from_strings(_parse_params(param_pairs))
    return cls(params)


# -- bounds: what a run needs, checked before anything is written -----------------------------
#: float32 channels a sample occupies while it is generated (RGB image + mask)
_CHANNELS = 4
#: working copies of a batch a generator holds at once (inputs, outputs, noise, blends); learned ones hold more
_WORK_FACTOR = {"procedural": 8, "learned": 64}
#: bytes a finished sample takes in memory until the run ends (the writer streams its record: an offset and a label)
_RECORD_BYTES = 16


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def available_memory() -> int | None:
    """Bytes of memory this process can still get (the cgroup's limit counts), or None if unknown."""
    free: list[int] = []
    try:
        import psutil

        free.append(int(psutil.virtual_memory().available))
    except Exception:  # psutil is optional
        try:
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
            free.append(int(info["MemAvailable"].split()[0]) * 1024)
        except (OSError, KeyError, ValueError):
            try:
                free.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
            except (OSError, ValueError, AttributeError):
                pass
    try:  # a container's memory limit (cgroup v2); its reclaimable page cache counts as free
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cg / "memory.current").read_text().strip())
            stat = dict(line.split() for line in (cg / "memory.stat").read_text().splitlines() if line.count(" ") == 1)
            free.append(max(0, int(limit) - used + int(stat.get("inactive_file", 0))))
    except (OSError, ValueError):
        pass
    return min(free) if free else None


def free_disk(path: str | Path) -> tuple[int, Path] | None:
    """Free bytes on the file system that ``path`` (or its nearest existing parent) lives on."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free, p
    except OSError:
        return None


def estimate_memory_bytes(*, n: int, size: int, batch_size: int, learned: bool = False, fit_images: int = 0,
                          workers: int = 1) -> int:
    """Peak bytes of a run: the batch each local worker generates, what is kept per finished sample, a fit's data."""
    work = _WORK_FACTOR["learned" if learned else "procedural"]
    px = size * size * _CHANNELS * 4
    return workers * batch_size * px * work + n * _RECORD_BYTES + fit_images * px * 2


def _manifest_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _count_files(folder: Path) -> int:
    try:
        with os.scandir(folder) as it:
            return sum(1 for e in it if e.is_file())
    except OSError:
        return 0


def check_resources(*, n: int, size: int, batch_size: int, out: str | Path, n_train: int = 0, learned: bool = False,
                    fit_images: int = 0, present: Callable[[], tuple[int, int]] = lambda: (0, 0), workers: int = 1) -> None:
    """Refuse (:class:`UserError`, one line with the estimate) a run this machine cannot hold or store.

    ``present()`` counts the samples and the train normals already written (a resumed run
    needs room for the rest only).
    Set ``ANOPLUG_NO_RESOURCE_CHECK=1`` when the estimates are wrong for your machine.
    """
    if os.environ.get(NO_RESOURCE_CHECK, "") not in ("", "0"):
        return
    from anoplug.data.writer import estimate_output_bytes

    skip = f"({NO_RESOURCE_CHECK}=1 skips this check)"
    disk = free_disk(out)
    if disk is not None:
        free, where = disk
        total = estimate_output_bytes(n, size, n_train=n_train)
        if total > free:  # a resumed run needs room for the missing files only
            samples, normals = present()
            total = estimate_output_bytes(max(0, n - samples), size, n_train=max(0, n_train - normals))
        if total > free:
            raise UserError(f"-n {n} at --size {size} needs about {_human(total)} of disk in {out} but {where} has "
                            f"{_human(free)} free; lower -n or --size, or choose another --out {skip}")
    need = estimate_memory_bytes(n=n, size=size, batch_size=batch_size, learned=learned, fit_images=fit_images,
                                 workers=workers)
    have = available_memory()
    if have is not None and need > have:
        px = size * size * _CHANNELS * 4
        each = f" in each of {workers} workers" if workers > 1 else ""
        parts = [(workers * batch_size * px * _WORK_FACTOR["learned" if learned else "procedural"],
                  f"for a batch of {batch_size} at --size {size}{each}"),
                 (n * _RECORD_BYTES, f"for the records of -n {n}"),
                 (fit_images * px * 2, f"for {fit_images} training images")]
        why = ", ".join(f"{_human(b)} {what}" for b, what in parts if b >= need / 10)
        raise UserError(f"this run needs about {_human(need)} of memory ({why}) but {_human(have)} is available; "
                        f"lower --batch-size, --size{', --workers' if workers > 1 else ''} or -n {skip}")


def _read_anomalies(spec: str, size: int) -> Any:
    """The defective images (label != good) of ``spec``'s test split, with their masks, at ``size``."""
    from anoplug.data import open_dataset
    from anoplug.types import GOOD

    name = spec[: -len(":test")] if spec.endswith(":test") else spec
    ds = open_dataset(name, split="test", size=size)
    if hasattr(ds, "labels"):
        labels = list(ds.labels)
    elif callable(getattr(ds, "label", None)):
        labels = [ds.label(i) for i in range(len(ds))]
    else:  # render to learn the labels
        labels = [lab for b in ds.iter_batches(16) for lab in b.label]
    idx = [i for i, lab in enumerate(labels) if lab != GOOD]
    if not idx:
        raise UserError(f"--anomalies {spec}: its test split holds no defective images (only {GOOD!r}); "
                        "pass a dataset with real defects and their masks")
    anomalies = ds.batch(idx)
    if not bool(anomalies.mask.any()):
        raise UserError(f"--anomalies {spec}: none of its {len(idx)} defective images has a mask "
                        "(ground_truth missing?); the learned methods need the defect regions")
    return anomalies


def _check_fit_flags(args: argparse.Namespace, cls: Any) -> None:
    """--fit / --fit-steps / --anomalies / --save / --load: every combination that cannot work, before any work."""
    name, learned = args.name, bool(cls.requires.fit)
    if args.anomalies and not args.fit:
        raise UserError(f"--anomalies is what --fit trains on: add --fit (or drop --anomalies {args.anomalies})")
    if args.fit_steps is not None and not args.fit:
        raise UserError("--fit-steps sets the steps of --fit: add --fit (or drop --fit-steps)")
    if args.save and not args.fit:
        raise UserError("--save writes the weights --fit trains: add --fit (a loaded or procedural generator "
                        "has nothing new to save)")
    if args.fit and not learned:
        raise UserError(f"{name} is not a learned method: there is nothing to fit; drop --fit")
    if args.fit and args.load:
        raise UserError("--fit trains a new model and --load reads a fitted one: pass one of them")
    if args.fit_steps is not None and args.fit_steps < 0:
        raise UserError(f"--fit-steps must be non-negative, got {args.fit_steps}")
    if args.anomalies and not cls.requires.anomalies:
        raise UserError(f"{name} takes no reference anomalies (it fits on the normals of --data); "
                        f"drop --anomalies {args.anomalies}")
    if args.pretrained and (args.fit or args.load):
        raise UserError("--pretrained loads a shipped checkpoint: drop it, or drop --fit/--load")
    if args.pretrained and not cls.pretrained:
        raise UserError(f"{name} ships no pretrained checkpoint; drop --pretrained {args.pretrained}")
    if learned and not args.load and not args.fit and cls.pretrained:
        args.pretrained = args.pretrained or next(iter(cls.pretrained))  # the shipped default
    if learned and not args.load and not args.pretrained:
        how = "--fit --anomalies SPEC (trains on --data and real defects, e.g. --anomalies toy:metal)" \
            if cls.requires.anomalies else "--fit (trains on --data)"
        if not args.fit:
            raise UserError(f"{name} must be fitted first: pass {how}, or --load DIR with saved weights")
        if cls.requires.anomalies and not args.anomalies:
            raise UserError(f"{name} fits on real defects with masks: pass --fit --anomalies SPEC "
                            "(e.g. --anomalies toy:metal, or mvtec:PATH/CATEGORY)")


def cmd_generate(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UserError(f"-n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.size < 16 or args.size > 4096:
        raise UserError(f"--size must be in [16, 4096], got {args.size}")
    if args.seed < 0:
        raise UserError(f"--seed must be non-negative, got {args.seed}")
    if args.n_train is not None and args.n_train < 0:
        raise UserError(f"--n-train must be non-negative, got {args.n_train}")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.replay:
        return _replay(args)
    if not args.name or not args.data:
        raise UserError("generate needs a generator NAME and --data (or --replay MANIFEST)")
    cls = _registry().generator_class(args.name)
    _check_fit_flags(args, cls)
    gen = _build_generator(args.name, args.param, args.load, args.pretrained)
    if args.pretrained:
        print(f"using {args.name}'s shipped checkpoint {args.pretrained!r} ({cls.pretrained_path(args.pretrained)})")
    from anoplug.data import open_dataset
    from anoplug.data.inputs import ConditionSource, check_used
    from anoplug.data.writer import JOURNAL, MANIFEST, write_generated

    if gen.level != "image":
        raise UserError(f"{args.name} is a feature-level method: it produces no images to write "
                        "(use it through its detector, see `anoplug info`)")
    if gen.requires.fit and not gen.is_fitted and not args.fit:
        raise UserError(f"{args.load} holds an unfitted {args.name} (a checkpoint saved before fit?): "
                        "pass a directory written after fitting")
    conditions = ConditionSource(masks=args.masks, boxes=args.boxes, prompt=args.prompt, defect_type=args.defect_type,
                                 references=args.references, depth=args.depth)
    check_used(gen, conditions)  # before a fit or anything is written
    for extra in conditions.extras():  # a reference folder's masks or captions this method has no use for
        if extra not in gen.requires.uses:
            what = "masks (NAME_mask.*)" if extra == "reference_masks" else "captions"
            print(f"note: {args.name} does not read reference {what}; --references {args.references} gives it "
                  "the images only")
    for name in gen.requires.conditions:
        if name not in conditions.names() and not (name == "source_image" and gen.requires.paired_source):
            flag = CONDITION_FLAGS.get(name, name)
            raise UserError(f"{args.name} needs conditions.{name}: pass {flag}")
    source = open_dataset(args.data, split="train", size=args.size)
    root = Path(args.out) / str(source.category or "dataset")
    executor = _executor(args, args.n)
    check_resources(n=args.n, size=args.size, batch_size=args.batch_size, out=args.out,
                    n_train=min(len(source), 64 if args.n_train is None else args.n_train),
                    learned=bool(gen.requires.fit), fit_images=len(source) if args.fit else 0,
                    present=lambda: (_manifest_lines(root / MANIFEST) + _manifest_lines(root / JOURNAL),
                                     _count_files(root / "train" / "good")), workers=_local_workers(executor))
    anomalies = _read_anomalies(args.anomalies, args.size) if args.fit and args.anomalies else None
    if args.fit:
        t0 = time.perf_counter()
        gen.fit(source.all(), anomalies, steps=args.fit_steps)
        shots = f" and {len(anomalies)} real defects from {args.anomalies}" if anomalies is not None else ""
        print(f"fitted {args.name} on {len(source)} normals{shots} in {time.perf_counter() - t0:.1f} s")
        if args.save:
            saved = gen.save(args.save)
            print(f"saved the fitted {args.name} to {saved} (reuse it with --load {saved})")
    summary = write_generated(gen, source, args.out, n=args.n, seed=args.seed, batch_size=args.batch_size,
                              n_train=args.n_train, progress=not args.quiet, conditions=conditions or None,
                              data=args.data, executor=executor)
    print(summary.line())
    print(f"manifest: {summary.manifest}")
    return 0


def _executor(args: argparse.Namespace, n: int) -> Any:
    """Where ``generate`` makes its samples: --workers local processes, or Dask (--executor dask, --scheduler)."""
    from anoplug.driver import make_executor, n_shards

    return make_executor(args.executor, args.workers, args.scheduler, n_shards=n_shards(n, args.batch_size))


def _local_workers(executor: Any) -> int:
    """Processes of this machine that each hold a batch (a Dask LocalCluster's too)."""
    from anoplug.driver import DaskExecutor

    return 1 if isinstance(executor, DaskExecutor) and executor.scheduler else int(getattr(executor, "workers", 1))


def _check_replay_resources(args: argparse.Namespace) -> None:
    """The bounds of a replay: -n and --size come from the manifest (its first record and its length)."""
    path = Path(args.replay)
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline())
        size = int(str(first["dataset"]).rsplit("@", 1)[1])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return  # replay_manifest reports what is wrong with the manifest
    n = max(1, _manifest_lines(path))
    check_resources(n=n, size=size, batch_size=args.batch_size, out=args.out,
                    n_train=int(first.get("n_train") or 0), learned=bool(args.load),
                    workers=_local_workers(_executor(args, n)))


def _replay(args: argparse.Namespace) -> int:
    """``generate --replay MANIFEST --out DIR``: the run's generator, data and draws come from the manifest."""
    from anoplug.data.writer import replay_manifest

    given = [flag for flag, v in (("NAME", args.name), ("--data", args.data), ("--param", args.param),
                                  ("--masks", args.masks), ("--boxes", args.boxes), ("--prompt", args.prompt),
                                  ("--defect-type", args.defect_type), ("--references", args.references),
                                  ("--depth", args.depth), ("--pretrained", args.pretrained),
                                  ("--fit", args.fit), ("--fit-steps", args.fit_steps is not None),
                                  ("--anomalies", args.anomalies), ("--save", args.save)) if v]
    if given:
        raise UserError(f"--replay takes everything from the manifest; drop {', '.join(given)}")
    _check_replay_resources(args)
    summary = replay_manifest(args.replay, args.out, load=args.load, batch_size=args.batch_size,
                              progress=not args.quiet, executor=_executor(args, max(1, _manifest_lines(Path(args.replay)))))
    print(summary.line(verb="replayed", what="samples"))
    print(f"manifest: {summary.manifest}")
    return 0


def demo_generators(reg: Any) -> list[str]:
    """Installed image-level generators that need no training, no pretrained weights and no condition.

    What ``make demo`` shows: the procedural methods, seconds for the whole set. A training-free
    method that runs a network per image (AnoStyler optimises a U-Net per image, AnomalyAny needs a
    prompt and a diffusion model) is one ``anoplug generate NAME`` away, not in the demo.
    """
    names = []
    for name, spec in reg.specs("generators").items():
        if spec.needs_fit:
            continue
        try:
            cls = reg.generator_class(name)
        except Exception as e:  # a broken plugin must not stop the demo
            print(f"skipping {name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        r = cls.requires
        if cls.level == "image" and not (r.fit or r.text or r.depth or r.weights or r.conditions):
            names.append(name)
    return names


def cmd_demo(args: argparse.Namespace) -> int:
    from anoplug import viz
    from anoplug.data import open_dataset
    from anoplug.data.writer import write_generated
    from anoplug.driver import CachedSource, generate_batch, make_executor, n_shards

    reg = _registry()
    out = Path(args.out)
    names = demo_generators(reg)
    if not names:
        raise UserError("no generators installed: install a plugin (e.g. pip install -e plugins/anoplug-draem)")
    if args.n < 1:
        raise UserError(f"-n must be at least 1, got {args.n}")
    source = open_dataset(f"toy:{args.category}", split="train", size=args.size)
    shown = CachedSource(source)  # the contact sheet's normals, rendered once for every method
    executor = make_executor("local", None, None, n_shards=n_shards(args.n, 16))
    results, failures = {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            fields = reg.generator_class(name).Params.model_fields
            gen = reg.get_generator(name, **({"probability": 1.0} if "probability" in fields else {}))
            summary = write_generated(gen, source, out / name, n=args.n, seed=args.seed, n_train=min(args.n, 8),
                                      progress=False, executor=executor)
            normals = shown.batch([i % len(source) for i in range(4)])
            # samples 0..3 of the run just written: the sheet shows the dataset's own bytes
            results[name] = (normals, generate_batch(gen, shown, range(4), seed=args.seed))
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
    from anoplug.scaffold import MissingExtraError, new_plugin, update_plugin

    try:
        if args.update:
            if args.name:
                raise ValueError("give either NAME (render a new plugin) or --update DIR, not both")
            version = update_plugin(args.update)
            print(f"updated {args.update} to template {version}; review with `git -C {args.update} diff`")
            return 0
        if not args.name:
            raise ValueError("new-plugin needs NAME (or --update DIR to update a rendered plugin)")
        root = new_plugin(args.name, args.dir, title=args.title, category=args.category, learned=args.learned,
                          author=args.author, email=args.email, licence=args.licence,
                          repository=args.repository, paper_url=args.paper_url)
    except MissingExtraError as e:  # one line naming the extra, not an ImportError traceback
        print(f"anoplug: error: {e}", file=sys.stderr)
        return 2
    print(f"created {root}\nnext: pip install -e {root} && pytest {root}\n"
          f"later: commit it, then `anoplug new-plugin --update {root}` brings it up to a newer template")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Convert a finished ``generate`` tree: a Hugging Face parquet dataset or COCO instance annotations."""
    from anoplug.data.export import export_coco, export_hf

    summary = export_hf(args.tree, args.out) if args.format == "hf-datasets" else export_coco(args.tree, args.out)
    print(summary.line())
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
    sp.add_argument("--pretrained", metavar="NAME", help="a checkpoint the plugin ships (default for a learned "
                    "method without --fit/--load: its first; `anoplug info NAME` lists them)")
    sp.add_argument("--fit", action="store_true", help="fit a learned generator on --data (and --anomalies) first")
    sp.add_argument("--fit-steps", type=int, default=None, help="training steps of --fit (default: the method's)")
    sp.add_argument("--anomalies", metavar="SPEC", help="real defects with masks to fit on: the defective images of "
                    "SPEC's test split (toy:CATEGORY, mvtec:PATH/CATEGORY, ...)")
    sp.add_argument("--save", metavar="DIR", help="after --fit, save the fitted generator here (reuse with --load DIR)")
    sp.add_argument("--masks", metavar="DIR", help="target masks, one image per sample (sorted, cycled): where defects go")
    sp.add_argument("--boxes", metavar="FILE", help="JSON list with one list of [label, x1, y1, x2, y2] per sample (cycled)")
    sp.add_argument("--prompt", metavar="TEXT", help="text prompt for every sample")
    sp.add_argument("--defect-type", metavar="NAME[,NAME...]",
                    help="defect type(s) to generate, cycled over the samples (methods fitted on several types)")
    sp.add_argument("--references", metavar="DIR", help="reference anomalies given to every sample: NAME.png, optional "
                    "NAME_mask.png, captions in captions.json {NAME: caption} or NAME.txt (docs/method_contract.md)")
    sp.add_argument("--depth", metavar="DIR", help="depth maps, one per sample (sorted, cycled), replacing the data's: "
                    "16/8-bit grey PNG or TIFF (scaled to [0,1]), float TIFF or .npy (as stored); larger = farther")
    sp.add_argument("--replay", metavar="MANIFEST", help="regenerate the dataset of this manifest from its recorded draws")
    sp.add_argument("--workers", type=int, default=None, metavar="N",
                    help="worker processes, each with its own model copy and one torch thread (default: this "
                         "machine's cores; 1 runs in this process). With --executor dask: the LocalCluster's size")
    sp.add_argument("--executor", choices=("local", "dask"), default=None,
                    help="local processes (default) or Dask: a LocalCluster, or the cluster at --scheduler")
    sp.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler, e.g. tcp://HOST:8786 (implies --executor dask)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    handlers["generate"] = cmd_generate

    sp = sub.add_parser("demo", help="the main job: every training-free generator on the embedded data")
    sp.add_argument("--out", default="out/demo")
    sp.add_argument("--category", default="metal")
    sp.add_argument("-n", type=int, default=16)
    sp.add_argument("--size", type=int, default=256)
    sp.add_argument("--seed", type=int, default=0)
    handlers["demo"] = cmd_demo

    sp = sub.add_parser("new-plugin", help="render a plugin distribution from the copier template (passes the "
                        "conformance kit), or --update one to a newer template")
    sp.add_argument("name", nargs="?", help="method name, e.g. my-method")
    sp.add_argument("--dir", default="plugins", help="parent folder (default plugins/)")
    sp.add_argument("--title", default="")
    sp.add_argument("--category", default="cutpaste", help="survey category (see `anoplug list`)")
    sp.add_argument("--learned", action="store_true", help="a learned method (fit: modules, training step, optimisers)")
    sp.add_argument("--author", default="")
    sp.add_argument("--email", default="")
    sp.add_argument("--licence", default="Apache-2.0", help="SPDX licence (default Apache-2.0)")
    sp.add_argument("--repository", default="", help="the plugin's source URL (its Homepage/Source)")
    sp.add_argument("--paper-url", default="", help="the paper's URL")
    sp.add_argument("--update", metavar="DIR", help="update the plugin rendered in DIR (a clean git work tree) to "
                    "this anoplug's template, keeping your edits (docs/plugin_template.md)")
    handlers["new-plugin"] = cmd_new_plugin

    sp = sub.add_parser("export", help="a generated tree as a Hugging Face parquet dataset or COCO annotations")
    sp.add_argument("--tree", required=True, metavar="DIR", help="the --out of `anoplug generate` (or one category in it)")
    sp.add_argument("--format", required=True, choices=("hf-datasets", "coco"),
                    help="hf-datasets: parquet for datasets.load_dataset; coco: instance annotations (boxes, RLE masks)")
    sp.add_argument("--out", required=True, metavar="PATH", help="a new folder (hf-datasets) or the JSON file (coco)")
    handlers["export"] = cmd_export

    # Plugins add their own verbs (anoplug-asbench: bench, evaluate); a failing one shows in `anoplug plugins`.
    handlers.update(_registry().add_commands(sub))
    return p, handlers


def _one_line(e: BaseException) -> str:
    """The exception's message on one line; its type when the message is empty (``MemoryError()``)."""
    if type(e) is KeyError and len(e.args) == 1:
        return f"missing key {e.args[0]!r}"
    text = " ".join(str(e).split())
    return text or f"{type(e).__name__} (no message)"


def _os_error(e: OSError, where: str | None) -> str:
    """One line for an error of the user's environment, naming the path and the cause."""
    path = e.filename if e.filename is not None else where
    at = f" {path}" if path is not None else ""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"no space left on the device (or quota) while writing{at}: free some space or choose another --out"
    if e.errno == errno.EROFS:
        return f"read-only file system: cannot write{at}; choose another --out"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{at} (read-only, or not yours to write)"
    reason = e.strerror or _one_line(e)
    return f"{reason}:{at}" if at else reason


def _error_kind(e: BaseException) -> str:
    """``user`` (exit 2: one line naming the cause) or ``internal`` (exit 1: type and message)."""
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
        return "os"
    if type(e) in (KeyError, IndexError):  # a bare lookup failure is a bug; named subclasses are the user's
        return "internal"
    if isinstance(e, USER_ERRORS) or any(t.__name__ in USER_ERROR_NAMES for t in type(e).__mro__):
        return "user"
    return "internal"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser, handlers = build_parser()
    except KeyboardInterrupt:  # a real Ctrl-C while plugins load (a plugin's own is recorded as broken)
        print("anoplug: interrupted", file=sys.stderr)
        return 130
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
    except Exception as e:
        if debug:
            raise
        kind = _error_kind(e)
        if kind == "memory":
            print(f"anoplug: error: out of memory (MemoryError{': ' + _one_line(e) if str(e) else ''}); "
                  "lower --batch-size, --size or -n", file=sys.stderr)
            return 2
        if kind == "os":
            print(f"anoplug: error: {_os_error(e, getattr(args, 'out', None))}", file=sys.stderr)
            return 2
        if kind == "user":
            print(f"anoplug: error: {_one_line(e)}", file=sys.stderr)
            return 2
        print(f"anoplug: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
