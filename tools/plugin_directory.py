"""Write ``docs/plugins.md``, the plugin directory, from the installed plugins' own metadata.

Nothing in the page is typed by hand (llm's hand-curated directory went stale, llm #470): each
row comes from a generator's class (paper, venue, code, category, learned, shipped weights,
level) or its distribution's metadata (version, licence, Homepage/Source/Paper URLs). CPU
seconds per image are measured once and cached in ``tools/plugin_timings.json``, so the drift
check (``tests/test_plugin_directory.py``) regenerates the page without measuring.

    python tools/plugin_directory.py                     # regenerate from the cache (what CI compares)
    python tools/plugin_directory.py --measure           # also measure generators missing from the cache
    python tools/plugin_directory.py --measure draem nsa # re-measure these
    make plugins-doc                                     # = --measure, then write the page

It also writes the README's "Methods in this repository" table (between its ``methods:`` markers).

Measured: training-free image-level generators and learned ones that ship weights
(``Generator.pretrained``, loaded with ``from_pretrained``), at 256x256 on a batch of 4
``toy:metal`` images, one torch thread, best of 3 timed calls after a warm-up, divided by 4.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata as md
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"
TIMINGS = REPO / "tools" / "plugin_timings.json"
SIZE, BATCH, REPEATS, DATA = 256, 4, 3, "toy:metal"
DASH = "—"


def _cell(text: Any) -> str:
    """One Markdown table cell: no pipes or line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _link(text: str, url: str) -> str:
    return f"[{_cell(text)}]({url})" if url else _cell(text) or DASH


def _code_label(url: str) -> str:
    """``https://github.com/owner/repo`` -> ``owner/repo`` (shorter in a table)."""
    parts = url.rstrip("/").split("/")
    return "/".join(parts[3:5]) if len(parts) >= 5 and parts[2] in ("github.com", "gitlab.com") else "code"


def registry() -> Any:
    """A fresh registry of the *installed* plugins (entry points only, nothing registered in code)."""
    from anoplug.registry import Registry

    reg = Registry()
    broken = {name: st.error for name, st in reg.status.items() if not st.ok}
    if broken:
        raise RuntimeError("plugins failed to load, fix or uninstall them first: "
                         + "; ".join(f"{n}: {e}" for n, e in sorted(broken.items())))
    return reg


def measurable(cls: type) -> bool:
    """Image-level and runnable without training: training-free, or learned with shipped weights."""
    return getattr(cls, "level", "image") == "image" and (not cls.requires.fit or bool(cls.pretrained))


def measure_one(cls: type) -> float:
    """CPU seconds per image of ``cls`` at the directory's protocol (see the module docstring)."""
    import torch

    from anoplug.data import open_dataset

    torch.set_num_threads(1)
    gen = cls.from_pretrained() if cls.requires.fit else cls()
    batch = open_dataset(DATA, split="train", size=SIZE).batch(range(BATCH))
    gen.generate(batch, seed=0)  # warm-up: lazy imports, allocator, first-call caches
    best = float("inf")
    for seed in range(1, REPEATS + 1):
        t0 = time.perf_counter()
        gen.generate(batch, seed=seed)
        best = min(best, time.perf_counter() - t0)
    return float(f"{best / BATCH:.3g}")


def load_timings(path: Path = TIMINGS) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"protocol": "", "seconds_per_image": {}, "machine": {}}


def _machine() -> str:
    """The CPU model (Linux: /proc/cpuinfo) and torch version a timing was taken with."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, torch {torch.__version__}, 1 thread"


def measure(reg: Any, timings: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    """Measure ``names`` (or every measurable generator missing from ``timings``); returns new timings."""
    installed = reg.specs("generators")  # entries of generators no longer installed are dropped
    secs = {k: v for k, v in timings.get("seconds_per_image", {}).items() if k in installed}
    machine = {k: v for k, v in timings.get("machine", {}).items() if k in installed}
    todo = names if names else [n for n in sorted(reg.specs("generators")) if n not in secs]
    for name in todo:
        cls = reg.generator_class(name)
        if not measurable(cls):
            print(f"{name}: not measured ({'feature-level' if cls.level != 'image' else 'learned, ships no weights'})")
            continue
        try:
            secs[name] = measure_one(cls)
        except Exception as e:  # a generator that needs inputs toy data lacks: show "—", say why
            print(f"{name}: not measured ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        machine[name] = _machine()
        print(f"{name}: {secs[name]} s per image")
    return {"protocol": f"{SIZE}x{SIZE}, batch {BATCH} of {DATA}, 1 torch thread, best of {REPEATS} after a warm-up",
            "seconds_per_image": dict(sorted(secs.items())), "machine": dict(sorted(machine.items()))}


def _dist_urls(dist: str) -> dict[str, str]:
    urls = {}
    for entry in md.metadata(dist).get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        urls[label.strip()] = url.strip()
    return urls


def render(reg: Any, timings: dict[str, Any]) -> str:
    """The page, from ``reg`` and the cached ``timings`` (a generator without one shows "—")."""
    from anoplug.specs import CATEGORIES

    secs = timings.get("seconds_per_image", {})
    order = {key: i for i, key in enumerate(CATEGORIES)}
    rows = []
    for name in reg.specs("generators"):
        cls, dist = reg.generator_class(name), reg.owner("generators", name)
        rows.append((order.get(cls.category, len(order)), name, cls, dist))
    lines = [
        "# Plugin directory",
        "",
        "<!-- Generated by `make plugins-doc` (tools/plugin_directory.py) from the installed plugins' metadata. "
        "Do not edit: tests/test_plugin_directory.py fails when this page and the plugins disagree. -->",
        "",
        "Every generator and evaluator that the plugins installed with `make setup` register, written from",
        "their classes and distribution metadata. `anoplug info NAME` shows a method's parameters;",
        "[docs/plugin_template.md](plugin_template.md) shows how to add a plugin of your own.",
        "",
        "## Generators",
        "",
        "| generator | plugin | category | paper | venue | code | masks | learned | shipped weights | CPU s / image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, name, cls, dist in sorted(rows, key=lambda r: r[:2]):
        paper = cls.paper
        venue = " ".join(str(x) for x in (paper.venue, paper.year or "") if x) or DASH
        code = _link(_code_label(paper.code_url), paper.code_url) if paper.code_url else DASH
        masks = "pixel" if cls.level == "image" else "feature map"
        learned = ("yes, needs real defects" if cls.requires.anomalies else "yes") if cls.requires.fit else "no"
        weights = ", ".join(f"`{w}`" for w in cls.pretrained) or DASH
        seconds = f"{secs[name]:.3g}" if name in secs else DASH
        home = _dist_urls(dist).get("Source") or _dist_urls(dist).get("Homepage", "")
        lines.append(f"| `{name}` | {_link(dist, home)} | {_cell(CATEGORIES.get(cls.category, cls.category))} | "
                     f"{_link(paper.title or DASH, paper.url)} | {_cell(venue)} | {code} | {masks} | {learned} | "
                     f"{weights} | {seconds} |")
    lines += [
        "",
        f"**CPU s / image**: {timings.get('protocol') or f'{SIZE}x{SIZE}, batch {BATCH} of {DATA}, 1 torch thread'};",
        "cached in `tools/plugin_timings.json` with the machine it was measured on (`make plugins-doc` measures",
        f"generators missing from it). {DASH}: not measured, because the method is learned and ships no weights (it",
        "needs `--fit` first), works on features rather than pixels, or has not been measured yet.",
        "**masks**: pixel masks with every image, or a feature-map mask (feature-level methods perturb a",
        "backbone's features during detector training: there is no anomalous image).",
        "",
        "## Evaluators",
        "",
        "| evaluator | plugin | kind | what it reports |",
        "|---|---|---|---|",
    ]
    for name, spec in sorted(reg.specs("evaluators").items()):
        dist = reg.owner("evaluators", name)
        lines.append(f"| `{name}` | {_link(dist, _dist_urls(dist).get('Source', ''))} | {spec.kind} | {_cell(spec.title)} |")
    lines += [
        "",
        "## Distributions",
        "",
        "| distribution | version | licence | provides | links |",
        "|---|---|---|---|---|",
    ]
    for st in sorted(reg.status.values(), key=lambda s: s.distribution):
        if st.distribution == "anoplug":
            continue  # the host's own datasets: `anoplug datasets`
        meta = md.metadata(st.distribution)
        provides = "; ".join(f"{kind}: {', '.join(f'`{n}`' for n in names)}" for kind, names in st.provides.items())
        links = ", ".join(_link(label, url) for label, url in _dist_urls(st.distribution).items()) or DASH
        lines.append(f"| {st.distribution} | {st.version} | {_cell(meta.get('License-Expression') or DASH)} | "
                     f"{provides or DASH} | {links} |")
    return "\n".join(lines) + "\n"


README = REPO / "README.md"
README_START = "<!-- methods:start (generated by `make plugins-doc`; do not edit) -->"
README_END = "<!-- methods:end -->"


def render_readme_section(reg: Any) -> str:
    """The README's "Methods in this repository" table: per survey category, its generators and plugins."""
    from anoplug.specs import CATEGORIES

    by_cat: dict[str, list[tuple[str, str, str]]] = {}
    for name in reg.specs("generators"):
        cls = reg.generator_class(name)
        mark = " ◆" if cls.pretrained else (" †" if cls.requires.fit else "")
        by_cat.setdefault(cls.category, []).append((name, reg.owner("generators", name), mark))
    lines = [README_START, "", "| survey category | generators (plugin) |", "|---|---|"]
    for key in [*CATEGORIES, *sorted(set(by_cat) - set(CATEGORIES))]:
        if key not in by_cat:
            continue
        cells = [f"`{n}`{mark} ({d})" for n, d, mark in sorted(by_cat[key])]
        lines.append(f"| {_cell(CATEGORIES.get(key, key))} | {_cell(', '.join(cells))} |")
    evaluators = ", ".join(f"`{n}`" for n in sorted(reg.specs("evaluators")))
    lines += [f"| evaluators | {evaluators} |", "",
              "◆ ships small trained weights (`anoplug generate NAME` works without `--fit`); † learned, ships none "
              "(`--fit` first); unmarked: nothing to train. "
              f"{len(reg.specs('generators'))} generators and {len(reg.specs('evaluators'))} evaluators in "
              f"{len([s for s in reg.status.values() if s.distribution != 'anoplug'])} plugin distributions; the "
              "[plugin directory](docs/plugins.md) has each one's paper, code, masks, weights and CPU time.",
              "", README_END]
    return "\n".join(lines)


def with_readme_section(text: str, section: str) -> str:
    """``text`` with the part between the markers replaced by ``section`` (a README without them is an error)."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the markers {README_START!r} ... {README_END!r}")
    return text[:start] + section + text[end + len(README_END):]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measure", nargs="*", metavar="NAME",
                   help="measure CPU seconds per image: of NAMEs, or (none given) of generators missing from the cache")
    p.add_argument("--out", type=Path, default=DOC)
    p.add_argument("--timings", type=Path, default=TIMINGS)
    args = p.parse_args(argv)
    try:
        reg = registry()
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    timings = load_timings(args.timings)
    if args.measure is not None:
        timings = measure(reg, timings, args.measure)
        args.timings.write_text(json.dumps(timings, indent=2) + "\n")
    args.out.write_text(render(reg, timings))
    README.write_text(with_readme_section(README.read_text(), render_readme_section(reg)))
    print(f"wrote {args.out} and the methods table of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
