"""``anoplug bench``: run generators x evaluators on real data and answer "which anomalies help my detector?".

For every category of ``--data`` the engine

1. loads the normal training images and the real test set, and splits the real defects the
   AnomalyDiffusion way: the first ⌊n/3⌋ of each defect type are *reference shots* (cluster
   centres for IC-LPIPS, the real side of KID), the rest plus every good image is the
   *held-out* test set of the downstream detector — no real defect is both reference and test;
2. generates ``n_synthetic`` anomalies per generator and seed through the host's one driver,
   :func:`anoplug.driver.generate_batch`, exactly as ``anoplug generate`` makes them (sample
   *i*: normal ``i % N``, paired source ``(i % N + 1) % N`` for generators that borrow one,
   seed ``sample_seed(seed, i)``, one torch thread), cached under ``OUT/cache`` by a hash of
   everything that determines them;
3. runs each evaluator with the inputs its kind needs (``per_sample``: the source normals;
   ``set``: the reference shots; ``downstream``: training normals + held-out test set);
4. writes ``results.json`` (config, every metric of every run, timings), ``results.md``
   (mean ± std over seeds per category, the average over categories, and the Spearman
   correlation between intrinsic and detection metrics across generators) and two plots.

ASBench's other axes ride on the same engine: ``ratios`` sweeps the per-sample synthetic
probability p of the detector's training set, ``pipelines`` trains each of ASBench's four
detection pipelines (``ad-unet``, ``draem``, ``destseg``, ``memseg``: the metrics plugin's
:mod:`anoplug_metrics.pipelines`, at their ``cpu`` scale, each given the normal every
generated image was made from) in place of the one default detector, and a generator named ``a+b`` is the equal
mixture of ``a`` and ``b`` (this plugin's ``hybrid`` generator; ``--preset asbench-hybrids``
names ASBench's 11, :mod:`anoplug_asbench.presets`).

Learned generators, alone or as hybrid members, are fitted once per category on the
training normals and — for the few-shot ones that learn from real defects, such as
AnomalyDiffusion — on the *reference shots*, never on the held-out test set; a fitted member
is shared by every hybrid and seed of the category. ``load`` (``--load NAME=DIR``) uses a
saved one instead. :data:`CPU_GENERATOR_PARAMS` is the bench's CPU profile for them.

An evaluator may report a confidence interval of a metric ``m`` as two more metrics,
``m_ci_low`` and ``m_ci_high`` (``downstream-utility`` does over its repeats); ``results.md``
then shows the interval, averaged over seeds, next to the mean.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BenchConfig", "BenchError", "run_bench", "split_shots", "spearman", "parse_data", "data_label", "CPU_UTILITY",
           "CPU_GENERATOR_PARAMS", "DEFAULT_EVALUATORS", "write_outputs"]

DEFAULT_EVALUATORS = ("mask-precision", "ic-lpips", "kid", "downstream-utility")
#: The CPU-sized downstream detector the bench uses by default (the paper's values are the evaluator's defaults).
CPU_UTILITY: dict[str, Any] = {"steps": 300, "base_width": 8, "lr": 1e-3, "batch_size": 8}
#: Evaluator params the bench sets so a CPU run stays within minutes (overridable per evaluator).
CPU_OVERRIDES: dict[str, dict[str, Any]] = {"ic-lpips": {"resize": 0}, "kid": {"subsets": 100}}
#: Generator params the bench sets for learned methods so a fit stays within CPU minutes (``--gen-param`` overrides;
#: ``--fit-steps`` sets the main phase). AnomalyDiffusion: 500 + 150 x types fit steps (paper: 2000 + 30001 x types),
#: 50 / 25 DDIM steps (paper: 200 / 100) on the bundled 64-px base model.
CPU_GENERATOR_PARAMS: dict[str, dict[str, Any]] = {
    # use_all_anomalies: train on every reference shot (the first third of each type, the original's split) rather
    # than the first third of those again; the held-out test set stays untouched either way
    "anomalydiffusion": {"fit_steps": 500, "mask_fit_steps": 150, "steps": 50, "mask_steps": 25, "use_all_anomalies": True},
}
PRIMARY_UTILITY = ("image_auroc", "pixel_ap", "au_pro")
#: Part of every cache key: bump when how a sample is made changes (2: paired sources as the writer does;
#: 3: made by anoplug.driver, with one torch thread as every executor uses).
INPUTS_VERSION = 3
#: Suffixes of the two metrics that carry a confidence interval of metric ``m`` (``m_ci_low``, ``m_ci_high``).
CI_SUFFIXES = ("_ci_low", "_ci_high")


class BenchError(ValueError):
    """A bad bench request (unknown data source, empty category list, ...); the message names it."""


@dataclass
class BenchConfig:
    generators: list[str]
    data: list[str]
    evaluators: list[str] = field(default_factory=lambda: list(DEFAULT_EVALUATORS))
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = "out/bench"
    size: int = 128
    n_train: int = 32
    n_test: int | None = None
    n_synthetic: int = 64
    ratios: list[float] = field(default_factory=list)  # ASBench p sweep; empty = the utility's default (0.5)
    #: ASBench detection pipelines for downstream evaluators, each at its ``cpu`` scale; empty = the one
    #: default detector with :data:`CPU_UTILITY`
    pipelines: list[str] = field(default_factory=list)
    generator_params: dict[str, dict] = field(default_factory=dict)
    evaluator_params: dict[str, dict] = field(default_factory=dict)
    fit_steps: int | None = None
    use_cache: bool = True
    #: learned generator -> saved directory used instead of fitting (``{category}`` is expanded per category)
    load: dict[str, str] = field(default_factory=dict)


def parse_data(spec: str) -> list[str]:
    """``toy:metal,wood`` -> [``toy:metal``, ``toy:wood``]; a bare later item reuses the first's folder.

    Options after ``?`` apply to every category: ``toy:metal,wood?difficulty=hard`` ->
    [``toy:metal?difficulty=hard``, ``toy:wood?difficulty=hard``].
    """
    scheme, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise BenchError(f"--data {spec!r} must look like SCHEME:CATEGORY[,CATEGORY...], e.g. toy:metal,wood")
    rest, q, query = rest.partition("?")
    items = [s.strip() for s in rest.split(",") if s.strip()]
    if not items:
        raise BenchError(f"--data {spec!r} names no category")
    first = items[0]
    parent = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
    tail = q + query
    return [f"{scheme}:{first}{tail}"] + [f"{scheme}:{it if '/' in it else parent + it}{tail}" for it in items[1:]]


def data_label(source: str) -> str:
    """What results call a data source: its category, with its options: ``metal``, ``metal[difficulty=hard]``."""
    rest, _, query = source.split(":", 1)[1].partition("?")
    category = rest.rstrip("/").rsplit("/", 1)[-1]
    return f"{category}[{query.replace('&', ',')}]" if query else category


def split_shots(labels: Sequence[str], good: str = "good") -> tuple[list[int], list[int]]:
    """(reference indices, held-out indices): the first ⌊n/3⌋ of each defect type are references.

    Good images all go to the held-out set. This is AnomalyDiffusion's split; it keeps the real
    defects that judge fidelity/diversity out of the detector's test set.
    """
    by_type: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        if lab != good:
            by_type.setdefault(lab, []).append(i)
    refs = sorted(i for idx in by_type.values() for i in idx[: len(idx) // 3])
    ref_set = set(refs)
    return refs, [i for i in range(len(labels)) if i not in ref_set]


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # ties share their average rank
        sel = x == v
        ranks[sel] = ranks[sel].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with < 3 finite pairs or a constant side."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# -- running -----------------------------------------------------------------------------------
def _hash(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _open(source: str, split: str, size: int, n: int | None) -> Any:
    from anoplug.data import open_dataset

    ds = open_dataset(source, split=split, size=size)
    count = len(ds) if n is None else min(n, len(ds))
    if count == 0:
        raise BenchError(f"{source} has no {split} images")
    return ds.batch(range(count))


def _needs_fit(name: str) -> bool:
    from anoplug.registry import get_registry

    return bool(get_registry().spec("generators", name).needs_fit)


def _generator_params(cfg: BenchConfig, name: str) -> dict:
    """The bench's CPU profile for ``name`` (learned methods only), overridden by ``--gen-param``."""
    return {**CPU_GENERATOR_PARAMS.get(name, {}), **cfg.generator_params.get(name, {})}


class Learned:
    """The learned generators of one category, fitted (or loaded) once and shared by every run that uses them.

    ``anomalies`` are the reference shots: real defects that never reach the detector's test set.
    """

    def __init__(self, cfg: BenchConfig, category: str, normals: Any, anomalies: Any) -> None:
        self.cfg, self.category, self.normals, self.anomalies = cfg, category, normals, anomalies
        self._trained: dict[str, Any] = {}

    def load_dir(self, name: str) -> str | None:
        d = self.cfg.load.get(name)
        return None if d is None else d.replace("{category}", self.category)

    def key(self, name: str) -> Any:
        """What decides the fitted model: the loaded files, or the fit's inputs and settings."""
        d = self.load_dir(name)
        if d is not None:
            return _load_key(d)
        refs = [m.get("source") for m in self.anomalies.meta] if self.anomalies is not None else []
        diff = [m.get("difficulty") for m in self.anomalies.meta] if self.anomalies is not None else []
        return ["fit", name, _generator_params(self.cfg, name), self.cfg.fit_steps, refs, diff]

    def get(self, name: str) -> Any:
        import anoplug
        from anoplug.registry import get_registry

        if name not in self._trained:
            d = self.load_dir(name)
            if d is not None:
                gen = get_registry().generator_class(name).from_pretrained(d)
            else:
                gen = anoplug.get_generator(name, **_generator_params(self.cfg, name))
                anomalies = self.anomalies if gen.requires.anomalies else None
                gen.fit(self.normals, anomalies, steps=self.cfg.fit_steps)
            self._trained[name] = gen
        return self._trained[name]


def _load_key(d: str) -> list:
    """A saved model's identity for the cache: its path and every file's size and modification time."""
    root = Path(d)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return ["load", d, [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]]


def _members(name: str) -> list[str]:
    return name.split("+") if "+" in name else [name]


def _make_generator(name: str, params: dict, learned: Learned | None = None) -> Any:
    import anoplug

    if "+" in name:  # ASBench hybrid: equal mixture of the named generators, learned ones fitted or loaded once
        members = [learned.get(m) if learned is not None and "@" not in m and _needs_fit(m) else m
                   for m in _members(name)]
        return anoplug.get_generator("hybrid", members=members, **params)
    if learned is not None and _needs_fit(name):
        return learned.get(name)
    return anoplug.get_generator(name, **params)


def generate_set(cfg: BenchConfig, name: str, seed: int, normals: Any, cache_dir: Path,
                 learned: Learned | None = None) -> tuple[Any, Any, float, bool]:
    """(generated, source normals, seconds, from_cache)."""
    from safetensors.torch import load_file, save_file

    from anoplug.data.inputs import InMemoryDataset, source_indices
    from anoplug.driver import generate_batch
    from anoplug.types import Batch

    params = cfg.generator_params.get(name, {})
    pool = InMemoryDataset(normals)
    source = pool.batch(source_indices(range(cfg.n_synthetic), len(pool)))  # what per-sample evaluators compare with
    fitted = [_load_key(m.partition("@")[2]) if "@" in m else learned.key(m) for m in _members(name)
              if "@" in m or (learned is not None and _needs_fit(m))]
    key = _hash(INPUTS_VERSION, name, params, seed, cfg.size, cfg.n_synthetic, [m.get("source") for m in normals.meta],
                cfg.fit_steps, *([fitted] if fitted else []))
    path = cache_dir / f"{name.replace('/', '_')}-seed{seed}-{key}.safetensors"
    if cfg.use_cache and path.is_file():
        t = load_file(str(path))
        labels = json.loads(path.with_suffix(".json").read_text())
        return Batch(image=t["image"], mask=t["mask"], label=labels), source, 0.0, True
    t0 = time.perf_counter()
    gen = _make_generator(name, params, learned)
    if getattr(gen.requires, "fit", False) and not getattr(gen, "is_fitted", False):
        gen.fit(normals, steps=cfg.fit_steps)  # without a Learned pool (direct calls): normals only
    out = generate_batch(gen, pool, range(cfg.n_synthetic), seed=seed)  # the writer's bytes for samples 0..n-1
    seconds = time.perf_counter() - t0
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"image": out.image.contiguous(), "mask": out.mask.contiguous()}, str(tmp))
    path.with_suffix(".json").write_text(json.dumps(list(out.label)))
    tmp.replace(path)
    return out, source, seconds, False


def _fitted_here(cfg: BenchConfig, reg: Any) -> set[str]:
    """Learned generators (alone or as members) the bench fits itself: not ``NAME@DIR``, not in ``load``."""
    return {m for g in cfg.generators for m in _members(g)
            if "@" not in m and reg.spec("generators", m).needs_fit and m not in cfg.load}


def _check_generators(cfg: BenchConfig, reg: Any) -> None:
    """Every name, member and ``load`` entry resolvable before anything is generated or trained."""
    for g in cfg.generators:
        for part in _members(g):
            name, _, ref = part.partition("@")
            spec = reg.spec("generators", name)  # a LookupError naming an unknown (or not installed) generator
            if ref:
                cls = reg.generator_class(name)
                if not spec.needs_fit:
                    raise BenchError(f"{part}: {name} is procedural, there is nothing to load; write {name}")
                if ref not in cls.pretrained and not (Path(ref) / "config.json").is_file():
                    raise BenchError(f"{part}: {ref} is neither a directory written by {name}.save() nor a checkpoint "
                                     f"{name} ships ({', '.join(cls.pretrained) or 'none'})")
        if "+" in g:
            reg.spec("generators", "hybrid")
    for name, d in cfg.load.items():
        if not reg.spec("generators", name).needs_fit:
            raise BenchError(f"--load {name}={d}: {name} is procedural, there is nothing to load")
        for source in cfg.data:
            where = Path(d.replace("{category}", data_label(source).split("[", 1)[0]))
            if not (where / "config.json").is_file():
                raise BenchError(f"--load {name}={d}: no saved {name} in {where} (a directory written by save())")


def _check_fit_data(cfg: BenchConfig, reg: Any, source: str, refs: Any) -> None:
    """Learned generators that learn from real defects need reference shots with masks; say how to do without."""
    for name in sorted(_fitted_here(cfg, reg)):
        if not reg.generator_class(name).requires.anomalies:
            continue
        empty = [i for i in range(len(refs)) if not bool(refs.mask[i].any())]
        if len(refs) == 0 or empty:
            raise BenchError(f"{name} learns from real defects (fitted on the bench's reference shots), but the reference "
                             f"shots of {source} {'are missing' if len(refs) == 0 else 'include defects without a mask'}; "
                             f"pass --load {name}=DIR (a saved {name}) or drop the generators that use it")


def _evaluator_params(cfg: BenchConfig, name: str, kind: str, seed: int, ratio: float | None,
                      pipeline: str | None) -> dict:
    """The bench's CPU settings for one evaluator run; ``--eval-param`` overrides them, the swept axes override all."""
    params = dict(CPU_OVERRIDES.get(name, {}))
    if kind == "downstream":
        # a named pipeline runs at its own CPU scale; the default detector keeps the bench's historical profile
        params.update({"pipeline": pipeline, "pipeline_scale": "cpu"} if pipeline else CPU_UTILITY, size=cfg.size, seed=seed)
    params.update(cfg.evaluator_params.get(name, {}))
    if pipeline:
        params["pipeline"] = pipeline
    if ratio is not None:
        params["anomaly_prob"] = ratio
    return params


def _tag(name: str, ratio: float | None, pipeline: str | None) -> str:
    """The column of one evaluator run: ``downstream-utility[draem]@p=0.5``."""
    return name + (f"[{pipeline}]" if pipeline else "") + ("" if ratio is None else f"@p={ratio:g}")


def _evaluate(cfg: BenchConfig, reg: Any, name: str, kind: str, seed: int, ratio: float | None, generated: Any,
              inputs: dict, pipeline: str | None = None) -> tuple[str, dict, Any]:
    """Run one evaluator with the bench's CPU settings; returns (column tag, JSON entry, report)."""
    params = _evaluator_params(cfg, name, kind, seed, ratio, pipeline)
    t0 = time.perf_counter()
    ev = reg.get_evaluator(name, **params)
    report = ev.evaluate(generated, **inputs)
    entry = {"params": ev.params.model_dump(mode="json"), "seconds": time.perf_counter() - t0,
             "metrics": {k: asdict(m) for k, m in report.metrics.items()}, "details": _slim(report.details)}
    return _tag(name, ratio, pipeline), entry, report


def _check_pipelines(cfg: BenchConfig, reg: Any, kinds: dict[str, str]) -> None:
    """Every named pipeline is one the downstream evaluators accept, checked before anything is generated."""
    if not cfg.pipelines:
        return
    downstream = [e for e, k in kinds.items() if k == "downstream"]
    if not downstream:
        raise BenchError(f"--pipelines {','.join(cfg.pipelines)} needs a downstream evaluator (e.g. downstream-utility)")
    for e in downstream:
        for p in cfg.pipelines:
            try:
                reg.get_evaluator(e, **_evaluator_params(cfg, e, "downstream", 0, None, p))
            except ValueError as err:
                raise BenchError(f"--pipelines {p}: {e} does not accept it ({str(err).splitlines()[0]})") from err


def run_bench(cfg: BenchConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run the whole grid and write the outputs; returns the results dict (also in ``OUT/results.json``)."""
    from tqdm.auto import tqdm

    from anoplug.registry import get_registry

    if not cfg.generators:
        raise BenchError("bench needs at least one generator (--generators a,b,c)")
    if not cfg.data:
        raise BenchError("bench needs at least one data source (--data toy:metal)")
    reg = get_registry()
    _check_generators(cfg, reg)  # unknown names, unloadable members fail now, not after an hour
    kinds = {e: reg.spec("evaluators", e).kind for e in cfg.evaluators}
    _check_pipelines(cfg, reg, kinds)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ratios = cfg.ratios or [None]
    rows: list[dict] = []
    runs: list[dict] = []
    total = len(cfg.data) * len(cfg.generators) * len(cfg.seeds)
    bar = tqdm(total=total, desc="bench", disable=not progress, unit="run")
    t_start = time.perf_counter()
    for source_name in cfg.data:
        category = data_label(source_name)  # "metal", or "metal[difficulty=hard]" with options
        cache_category = category.split("[", 1)[0]  # generated sets depend on the normals, which options do not change
        normals = _open(source_name, "train", cfg.size, cfg.n_train)
        test = _open(source_name, "test", cfg.size, cfg.n_test)
        ref_idx, held_idx = split_shots(test.label)
        if not ref_idx:
            raise BenchError(f"{source_name}: too few real defects to split off reference shots (need >= 3 per type)")
        refs, held_out = test[ref_idx], test[held_idx]
        _check_fit_data(cfg, reg, source_name, refs)
        learned = Learned(cfg, cache_category, normals, refs)
        for gname in cfg.generators:
            for seed in cfg.seeds:
                bar.set_postfix_str(f"{category} {gname} seed {seed}")
                generated, source, gen_s, cached = generate_set(cfg, gname, seed, normals, out / "cache" / cache_category,
                                                                learned)
                run = {"category": category, "data": source_name, "generator": gname, "seed": seed,
                       "generate_seconds": gen_s, "from_cache": cached, "n_generated": len(generated), "evaluators": {}}
                inputs = {"per_sample": {"normals": source}, "set": {"normals": normals, "real": refs},
                          # sources: the normal behind each generated image (the pipelines that learn from
                          # the clean image, DRAEM's and DeSTSeg's, need it)
                          "downstream": {"normals": normals, "real": held_out, "sources": source}}
                for ename, ratio, pipeline in _evaluator_runs(cfg, kinds, ratios):
                    tag, entry, report = _evaluate(cfg, reg, ename, kinds[ename], seed, ratio, generated,
                                                   inputs.get(kinds[ename], inputs["set"]), pipeline)
                    run["evaluators"][tag] = entry
                    rows += [{"category": category, "generator": gname, "seed": seed, "evaluator": tag, "metric": k,
                              "value": m.value, "higher_is_better": m.higher_is_better, "kind": kinds[ename]}
                             for k, m in report.metrics.items()]
                    if log:
                        shown = ", ".join(f"{k}={m.value:.3f}" for k, m in list(report.metrics.items())[:4])
                        log(f"{category} {gname} seed {seed} {tag}: {shown} ({entry['seconds']:.0f}s)")
                runs.append(run)
                bar.update(1)
    bar.close()
    results = {"config": asdict(cfg), "cpu_utility_profile": CPU_UTILITY, "cpu_overrides": CPU_OVERRIDES,
               "cpu_generator_params": {k: v for k, v in CPU_GENERATOR_PARAMS.items() if k in _fitted_here(cfg, reg)},
               "environment": _environment(), "seconds": time.perf_counter() - t_start, "rows": rows, "runs": runs}
    write_outputs(results, out)
    return results


def _evaluator_runs(cfg: BenchConfig, kinds: dict[str, str],
                    ratios: list) -> list[tuple[str, float | None, str | None]]:
    """(evaluator, ratio, pipeline) of every evaluator run of one generated set: downstream ones swept."""
    runs: list[tuple[str, float | None, str | None]] = []
    for e in cfg.evaluators:
        if kinds[e] == "downstream":
            runs += [(e, r, p) for p in cfg.pipelines or [None] for r in ratios]
        else:
            runs.append((e, None, None))
    return runs


def _slim(details: dict) -> dict:
    """Details without bulky per-sample arrays (kept JSON-friendly)."""
    slim = {}
    for k, v in details.items():
        if k in ("per_sample", "clusters"):
            continue
        slim[k] = v
    return json.loads(json.dumps(slim, default=str))


def _environment() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine()}


# -- reporting ---------------------------------------------------------------------------------
def _aggregate(rows: list[dict]) -> dict[tuple[str, str, str], tuple[float, float, int, bool]]:
    """(category, generator, evaluator/metric) -> (mean, std over seeds, n seeds, higher is better)."""
    acc: dict[tuple[str, str, str], list[float]] = {}
    hib: dict[tuple[str, str, str], bool] = {}
    for r in rows:
        key = (r["category"], r["generator"], f"{r['evaluator']}/{r['metric']}")
        acc.setdefault(key, []).append(r["value"])
        hib[key] = r["higher_is_better"]
    out = {}
    for k, vals in acc.items():
        v = np.asarray(vals, float)
        fin = v[np.isfinite(v)]
        out[k] = (float(fin.mean()) if len(fin) else float("nan"), float(fin.std()) if len(fin) > 1 else 0.0, len(fin), hib[k])
    return out


def _fmt(mean: float, std: float, n: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def _is_ci(metric: str) -> bool:
    """A bound of another metric's confidence interval (``…_ci_low`` / ``…_ci_high``), not a metric of its own."""
    return metric.endswith(CI_SUFFIXES)


def _cell(agg: dict, cat: str, gen: str, metric: str | None) -> str:
    """``mean ± std`` over seeds, then the evaluator's interval ``[low, high]`` (bounds averaged over seeds) if any."""
    if metric is None or (cat, gen, metric) not in agg:
        return "n/a"
    text = _fmt(*agg[(cat, gen, metric)][:3])
    low, high = (agg.get((cat, gen, metric + sfx), (math.nan,))[0] for sfx in CI_SUFFIXES)
    if text != "n/a" and math.isfinite(low) and math.isfinite(high):
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def _short(metric: str, all_metrics: Sequence[str]) -> str:
    """``evaluator/metric`` -> ``metric`` when that name is unique among the columns."""
    tail = metric.split("/", 1)[1]
    return tail if sum(m.split("/", 1)[1] == tail for m in all_metrics) == 1 else metric


def _is_primary_detection(metric: str) -> bool:
    return metric.split("/", 1)[1].removesuffix("_gain") in PRIMARY_UTILITY


def correlations(rows: list[dict]) -> list[dict]:
    """Spearman between every intrinsic metric and each primary detection metric, over (category, generator) means."""
    agg = _aggregate(rows)
    kinds = {f"{r['evaluator']}/{r['metric']}": r["kind"] for r in rows}
    cells = sorted({(c, g) for c, g, _ in agg})
    intrinsic = [m for m, k in kinds.items() if k != "downstream" and not _is_ci(m)]
    detection = [m for m, k in kinds.items() if k == "downstream" and _is_primary_detection(m)]
    table = []
    for im in intrinsic:
        for dm in detection:
            xs = np.array([agg.get((c, g, im), (np.nan,))[0] for c, g in cells], float)
            ys = np.array([agg.get((c, g, dm), (np.nan,))[0] for c, g in cells], float)
            n = int(np.sum(np.isfinite(xs) & np.isfinite(ys)))
            table.append({"intrinsic": im, "detection": dm, "spearman": spearman(xs, ys), "n": n})
    return table


MAIN_COLUMNS = ("leakage", "coverage", "boundary_f1", "ic_lpips", "kid", "image_auroc", "pixel_ap", "au_pro",
                "image_auroc_gain", "pixel_ap_gain", "au_pro_gain")


def _main_column(metric: str) -> bool:
    tail = metric.split("/", 1)[1]
    return any(tail == c or tail.startswith(c + "@") or tail.startswith(c + "_substitute") for c in MAIN_COLUMNS)


def markdown(results: dict) -> str:
    rows = results["rows"] + baseline_rows(results)
    agg = _aggregate(rows)
    cfg = results["config"]
    metrics = [m for m in dict.fromkeys(f"{r['evaluator']}/{r['metric']}" for r in rows) if not _is_ci(m)]
    swept = [m for m in metrics if "@p=" in m]
    shown = [m for m in metrics if _main_column(m) and m not in swept] or [m for m in metrics if m not in swept] or metrics
    hib = {f"{r['evaluator']}/{r['metric']}": r["higher_is_better"] for r in rows}
    lines = ["# anoplug bench", "",
             f"Generators: {', '.join(cfg['generators'])}; data: {', '.join(cfg['data'])}; seeds: {cfg['seeds']}; "
             f"{cfg['size']} px; {cfg['n_train']} normals; {cfg['n_synthetic']} synthetic per run; "
             f"total {results['seconds'] / 60:.1f} min.",
             f"Downstream detector (CPU profile): {results['cpu_utility_profile']}. Values: mean ± std over seeds, "
             "then [low, high], the evaluator's confidence interval (bounds averaged over seeds) where it reports one; "
             "`_gain` = metric minus the same detector trained on normals only. All metrics: results.json.", ""]
    cats = list(dict.fromkeys(r["category"] for r in rows))
    gens = list(dict.fromkeys(r["generator"] for r in rows))
    header = "| generator | " + " | ".join(f"{_short(m, shown)} {'↑' if hib[m] else '↓'}" for m in shown) + " |"
    for cat in cats + (["mean over categories"] if len(cats) > 1 else []):
        lines += [f"## {cat}", "", header, "|---|" + "---|" * len(shown)]
        for g in gens:
            cells = []
            for m in shown:
                if cat == "mean over categories":
                    vals = np.array([agg[(c, g, m)][0] for c in cats if (c, g, m) in agg], float)
                    cells.append(_fmt(float(np.nanmean(vals)), 0.0, 1) if np.isfinite(vals).any() else "n/a")
                else:
                    cells.append(_cell(agg, cat, g, m))
            if any(c != "n/a" for c in cells):
                lines.append(f"| {g} | " + " | ".join(cells) + " |")
        lines.append("")
    if swept:
        lines += _ratio_table(agg, cats, gens, swept)
    corr = correlations(results["rows"])
    if corr:
        n_cells = len({(r["category"], r["generator"]) for r in results["rows"]})
        det = list(dict.fromkeys(c["detection"] for c in corr))
        lines += [f"## Spearman ρ, intrinsic metric vs detection metric (over {n_cells} category × generator means)", "",
                  "| intrinsic \\ detection | " + " | ".join(_short(d, det) for d in det) + " |", "|---|" + "---|" * len(det)]
        for im in dict.fromkeys(c["intrinsic"] for c in corr):
            vals = {c["detection"]: c["spearman"] for c in corr if c["intrinsic"] == im}
            cells = ["n/a" if not math.isfinite(vals[d]) else f"{vals[d]:+.2f}" for d in det]
            lines.append(f"| {im} | " + " | ".join(cells) + " |")
        lines += ["", "n/a: fewer than 3 finite pairs or a constant metric. With few generators ρ is coarse "
                  "(n = 3 allows only ±1 and ±0.5); read it as a direction, not a measurement.", ""]
    return "\n".join(lines)


def _ratio_table(agg: dict, cats: list[str], gens: list[str], swept: list[str]) -> list[str]:
    """ASBench's ratio axis: one row per (category, generator, p), primary detection metrics as columns."""
    ratios = list(dict.fromkeys(m.split("@p=", 1)[1].split("/", 1)[0] for m in swept))
    cols = [c for c in ("image_auroc", "pixel_ap", "au_pro", "image_auroc_gain", "pixel_ap_gain", "au_pro_gain")
            if any(m.endswith("/" + c) for m in swept)]
    lines = ["## Synthetic-ratio sweep (ASBench: p = probability a training sample is synthetic)", "",
             "| category | generator | p | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for cat in cats:
        for g in gens:
            for p in ratios:
                cells = []
                for c in cols:
                    key = next((m for m in swept if m.split("@p=", 1)[1] == f"{p}/{c}"), None)
                    cells.append(_cell(agg, cat, g, key))
                if any(x != "n/a" for x in cells):
                    lines.append(f"| {cat} | {g} | {p} | " + " | ".join(cells) + " |")
    return lines + [""]


def plots(results: dict, out: Path) -> list[Path]:
    """utility.png (bars with seed error bars) and intrinsic_vs_utility.png (scatter); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"] + baseline_rows(results)
    agg = _aggregate(rows)
    cats = list(dict.fromkeys(r["category"] for r in rows))
    gens = list(dict.fromkeys(r["generator"] for r in rows))
    util = [m for m in dict.fromkeys(f"{r['evaluator']}/{r['metric']}" for r in rows if r["kind"] == "downstream")
            if m.split("/")[1] in PRIMARY_UTILITY]
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    if util:
        fig, axes = plt.subplots(1, len(cats), figsize=(4 + 2.2 * len(gens) * len(cats) * 0.6, 3.6), squeeze=False)
        width = 0.8 / max(len(util), 1)
        for ax, cat in zip(axes[0], cats):
            for j, m in enumerate(util):
                means = [agg.get((cat, g, m), (np.nan, 0, 0))[0] for g in gens]
                stds = [agg.get((cat, g, m), (np.nan, 0, 0))[1] for g in gens]
                ax.bar(np.arange(len(gens)) + j * width, means, width, yerr=stds, capsize=3, label=m.split("/", 1)[1])
            ax.set_xticks(np.arange(len(gens)) + width * (len(util) - 1) / 2, gens, rotation=30, ha="right")
            ax.set_title(f"{cat}: downstream utility")
            ax.set_ylim(0, 1.05)
        axes[0][0].legend(fontsize=7)
        save(fig, "utility.png")
    intrinsic = [m for m in dict.fromkeys(f"{r['evaluator']}/{r['metric']}" for r in rows if r["kind"] != "downstream")
                 if not _is_ci(m)]
    target = next((m for m in util if m.endswith("/image_auroc")), util[0] if util else None)
    if intrinsic and target:
        cols = min(len(intrinsic), 4)
        nrow = math.ceil(len(intrinsic) / cols)
        fig, axes = plt.subplots(nrow, cols, figsize=(3.4 * cols, 3.0 * nrow), squeeze=False)
        for ax, im in zip(axes.flat, intrinsic):
            for g in [g for g in gens if g != BASELINE_NAME]:
                xs = [agg.get((c, g, im), (np.nan,))[0] for c in cats]
                ys = [agg.get((c, g, target), (np.nan,))[0] for c in cats]
                ax.scatter(xs, ys, label=g)
            ax.set_xlabel(im, fontsize=7)
            ax.set_ylabel(target.split("/", 1)[1], fontsize=7)
        for ax in list(axes.flat)[len(intrinsic):]:
            ax.axis("off")
        axes[0][0].legend(fontsize=6)
        save(fig, "intrinsic_vs_utility.png")
    return written


BASELINE_NAME = "(normals only)"


def baseline_rows(results: dict) -> list[dict]:
    """Rows for the no-anomaly detector that ``downstream-utility`` trains as its baseline (one per category/seed)."""
    seen, rows = set(), []
    for run in results.get("runs", []):
        for tag, ev in run["evaluators"].items():
            base = (ev.get("details") or {}).get("baseline")
            if not base:
                continue
            for k, v in base["metrics"].items():
                key = (run["category"], run["seed"], tag, k)
                if key not in seen:
                    seen.add(key)
                    rows.append({"category": run["category"], "generator": BASELINE_NAME, "seed": run["seed"],
                                 "evaluator": tag, "metric": k, "value": v, "higher_is_better": True, "kind": "downstream"})
    return rows


def write_outputs(results: dict, out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results["correlations"] = correlations(results["rows"])
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    tmp = paths["json"].with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(paths["json"])
    paths["markdown"].write_text(markdown(results))
    for p in plots(results, out):
        paths[p.stem] = p
    return paths
