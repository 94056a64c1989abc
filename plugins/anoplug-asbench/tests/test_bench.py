"""The bench engine and the bench/evaluate CLI, end to end on tiny settings (tiny generator, 32 px, few steps)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from anoplug_asbench.bench import BenchConfig, BenchError, markdown, parse_data, run_bench, spearman, split_shots
from pydantic import Field

from anoplug import GeneratorSpec, hookimpl
from anoplug.generator import Generator, Paper, Requires
from anoplug.params import Params


class _DarkParams(Params):
    side: int = Field(8, ge=2, le=64, description="square side in pixels")


class TinyDark(Generator):
    """Darkens a random square: a stand-in generator registered only in these tests."""

    name = "tiny-dark"
    title = "tiny dark square"
    category = "cutpaste"
    paper = Paper("test generator", "", 2026, "https://example.invalid")
    Params = _DarkParams

    def sample(self, batch: Any, rngs: Any) -> list[dict]:
        h = batch.image.shape[-1]
        return [{"y": int(torch.randint(0, h - self.params.side, (1,), generator=g)),
                 "x": int(torch.randint(0, h - self.params.side, (1,), generator=g))} for g in rngs]

    def apply(self, batch: Any, samples: list[dict]) -> Any:
        out = batch.clone()
        s = self.params.side
        for i, p in enumerate(samples):  # one slice per sample, not per pixel
            out.mask[i, :, p["y"]:p["y"] + s, p["x"]:p["x"] + s] = 1
        out.image = (out.image - 0.3 * out.mask).clamp(0, 1)
        out.label = ["dark"] * len(out)
        return out


class TinyPaired(TinyDark):
    """Pastes a square of its paired source image (``conditions.source_image``), as NSA borrows a patch."""

    name = "tiny-paired"
    title = "tiny paired paste"
    requires = Requires(accepts=("source_image",))

    def apply(self, batch: Any, samples: list[dict]) -> Any:
        out = batch.clone()
        src = batch.conditions.source_image
        s = self.params.side
        for i, p in enumerate(samples):
            box = (i, slice(None), slice(p["y"], p["y"] + s), slice(p["x"], p["x"] + s))
            out.image[box] = src[box]
            out.mask[box[0], :, box[2], box[3]] = 1
        out.label = ["paste"] * len(out)
        return out


class TinyLearned(TinyDark):
    """A learned stand-in: fitting needs real anomalies, so a stray re-fit on normals alone raises."""

    name = "tiny-learned"
    title = "tiny learned square"
    requires = Requires(fit=True, anomalies=True)

    def fit(self, normals: Any, anomalies: Any = None, **kw: Any) -> Any:
        if anomalies is None:
            raise ValueError("tiny-learned.fit needs anomalies")
        return self.mark_fitted()

    @classmethod
    def from_pretrained(cls, name_or_dir: Any = None) -> TinyLearned:
        return cls().mark_fitted()


class TinyMaskless(TinyDark):
    """Darkens a square but, like an unconditional defect DDPM, does not say where: no mask."""

    name = "tiny-maskless"
    provides_mask = False

    def apply(self, batch: Any, samples: list[dict]) -> Any:
        out = super().apply(batch, samples)
        out.mask.zero_()
        return out


class _TinyPlugin:
    @hookimpl
    def anoplug_generators(self) -> list[GeneratorSpec]:
        return [GeneratorSpec("tiny-dark", TinyDark, title="tiny dark square"),
                GeneratorSpec("tiny-paired", TinyPaired, title="tiny paired paste"),
                GeneratorSpec("tiny-learned", TinyLearned, title="tiny learned square", needs_fit=True)]


@pytest.fixture
def registry(tmp_plugin: Any) -> Any:
    import anoplug_asbench.plugin
    import anoplug_metrics.plugin

    tmp_plugin(_TinyPlugin(), "tiny")
    tmp_plugin(anoplug_metrics.plugin, "metrics")
    tmp_plugin(anoplug_asbench.plugin, "asbench")
    try:  # a real second member for the hybrid, when the CutPaste plugin is installed
        import anoplug_cutpaste.plugin

        tmp_plugin(anoplug_cutpaste.plugin, "cutpaste")
    except ImportError:
        pass
    return tmp_plugin


TINY_EVAL = {"downstream-utility": {"steps": 3, "base_width": 2, "batch_size": 2},
             "kid": {"subsets": 3, "resize": 32}, "ic-lpips": {"resize": 0}}


def test_spearman_hand_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties get average ranks: x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4) -> rho = 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(spearman([1, 2], [3, 4])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_split_shots_first_third_per_type() -> None:
    labels = ["good", "a", "b", "a", "good", "a", "b", "b", "a", "b", "a", "a"]
    refs, held = split_shots(labels)
    # 'a' at 1,3,5,8,10,11 -> first 2; 'b' at 2,6,7,9 -> first 1.
    assert refs == [1, 2, 3]
    assert sorted(refs + held) == list(range(len(labels))) and not set(refs) & set(held)


def test_parse_data() -> None:
    assert parse_data("toy:metal,wood") == ["toy:metal", "toy:wood"]
    assert parse_data("mvtec:/d/mvtec/bottle,cable") == ["mvtec:/d/mvtec/bottle", "mvtec:/d/mvtec/cable"]
    with pytest.raises(BenchError, match="SCHEME:CATEGORY"):
        parse_data("metal")


def test_parse_data_options_apply_to_every_category() -> None:
    from anoplug_asbench.bench import data_label

    assert parse_data("toy:metal?difficulty=hard") == ["toy:metal?difficulty=hard"]
    assert parse_data("toy:metal,wood?difficulty=hard&width=0.4") == ["toy:metal?difficulty=hard&width=0.4",
                                                                      "toy:wood?difficulty=hard&width=0.4"]
    assert data_label("toy:metal") == "metal" and data_label("mvtec:/d/mvtec/bottle") == "bottle"
    assert data_label("toy:metal?difficulty=hard&width=0.4") == "metal[difficulty=hard,width=0.4]"


def test_bench_end_to_end(registry: Any, tmp_path: Any) -> None:
    cfg = BenchConfig(generators=["tiny-dark", "tiny-dark+cutpaste"] if _has("cutpaste") else ["tiny-dark"],
                      data=["toy:metal"], seeds=[0, 1], out=str(tmp_path / "b"), size=32, n_train=6, n_test=20,
                      n_synthetic=6, evaluator_params=TINY_EVAL)
    res = run_bench(cfg, progress=False)
    out = tmp_path / "b"
    for name in ("results.json", "results.md", "utility.png", "intrinsic_vs_utility.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    metrics = {(r["generator"], r["seed"], r["metric"]) for r in saved["rows"]}
    assert ("tiny-dark", 1, "image_auroc") in metrics and ("tiny-dark", 0, "leakage") in metrics
    assert ("tiny-dark", 0, "image_auroc_gain") in metrics
    leak = [r["value"] for r in saved["rows"] if r["metric"] == "leakage" and r["generator"] == "tiny-dark"]
    assert leak == [0.0, 0.0]  # the tiny generator changes nothing outside its mask
    assert "Spearman" in (out / "results.md").read_text()
    assert not res["runs"][0]["from_cache"]
    # A re-run reads the cached generated sets.
    again = run_bench(cfg, progress=False)
    assert all(r["from_cache"] for r in again["runs"])


def _has(name: str) -> bool:
    from anoplug.registry import get_registry

    try:
        get_registry().spec("generators", name)
        return True
    except LookupError:
        return False


def test_a_loaded_learned_generator_is_not_fitted_again(registry: Any, tmp_path: Any) -> None:
    """``--load NAME=DIR`` gives a fitted model: the bench generates with it as loaded (it used to call
    ``fit(normals)`` on it again, which a method that learns from anomalies refuses)."""
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "config.json").write_text("{}")  # what the bench checks before it starts
    cfg = BenchConfig(generators=["tiny-learned"], data=["toy:metal"], seeds=[0], out=str(tmp_path / "b"), size=32,
                      n_train=6, n_test=20, n_synthetic=4, evaluators=["mask-precision"],
                      load={"tiny-learned": str(tmp_path / "saved")})
    res = run_bench(cfg, progress=False)
    assert [r["generator"] for r in res["runs"]] == ["tiny-learned"]


def test_bench_unknown_generator_fails_early(registry: Any, tmp_path: Any) -> None:
    with pytest.raises(LookupError, match="no-such"):
        run_bench(BenchConfig(generators=["no-such"], data=["toy:metal"], out=str(tmp_path)), progress=False)


def test_cli_bench_and_evaluate(registry: Any, tmp_path: Any, capsys: Any) -> None:
    from anoplug.cli import main
    from anoplug.data.toy import ToyDataset
    from anoplug.data.writer import write_generated

    out = tmp_path / "cli"
    rc = main(["bench", "--generators", "tiny-dark", "--data", "toy:metal", "--size", "32", "--n-train", "4",
               "--n-test", "20", "--n-synthetic", "4", "--evaluators", "mask-precision,downstream-utility",
               "--eval-param", "downstream-utility.steps=2", "--eval-param", "downstream-utility.base_width=2",
               "--ratios", "0.5,1", "--quiet", "--out", str(out)])
    assert rc == 0 and (out / "results.md").is_file()
    evals = {r["evaluator"] for r in json.loads((out / "results.json").read_text())["rows"]}
    assert {"downstream-utility@p=0.5", "downstream-utility@p=1"} <= evals  # the ASBench ratio sweep
    assert "| tiny-dark |" in capsys.readouterr().out
    assert main(["bench", "--generators", "tiny-dark", "--data", "toy:metal", "--size", "40"]) == 2
    assert main(["bench", "--generators", "tiny-dark", "--data", "toy:metal", "--seeds", "x"]) == 2
    assert main(["bench", "--generators", "tiny-dark", "--data", "toy:metal", "--ratios", "2"]) == 2

    tree = tmp_path / "gen"
    write_generated(TinyDark(), ToyDataset("metal", "train", size=32, length=4), tree, n=4, progress=False)
    assert main(["evaluate", "--evaluator", "mask-precision", "--generated", str(tree / "metal")]) == 0
    assert "leakage: 0.0000" in capsys.readouterr().out
    assert main(["evaluate", "--evaluator", "kid", "--generated", str(tree / "metal"), "--real", "toy:metal",
                 "--param", "subsets=2", "--param", "resize=32", "--out", str(tmp_path / "kid.json")]) == 0
    assert json.loads((tmp_path / "kid.json").read_text())["evaluator"] == "kid"
    assert main(["evaluate", "--evaluator", "kid", "--generated", str(tmp_path / "nowhere")]) == 2


def test_evaluate_refuses_mask_precision_on_a_maskless_tree(registry: Any, tmp_path: Any, capsys: Any) -> None:
    """The manifest's ``provides_mask: false`` reaches the evaluator: an empty mask is not scored as "no defect"."""
    from anoplug.cli import main
    from anoplug.data.toy import ToyDataset
    from anoplug.data.writer import write_generated

    tree = tmp_path / "gen"
    write_generated(TinyMaskless(), ToyDataset("metal", "train", size=32, length=4), tree, n=4, progress=False)
    capsys.readouterr()
    assert main(["evaluate", "--evaluator", "mask-precision", "--generated", str(tree / "metal")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "provides no mask" in err[0], err


def test_paired_source_samples_match_the_writer(registry: Any, tmp_path: Any) -> None:
    """Sample i of bench: normal i % N, paired source (i % N + 1) % N, seed sample_seed(seed, i) — the writer's bytes."""
    from anoplug_asbench.bench import _open, generate_set

    from anoplug.data.inputs import InMemoryDataset
    from anoplug.data.writer import write_generated
    from anoplug.types import Batch, to_uint8

    cfg = BenchConfig(generators=["tiny-paired"], data=["toy:metal"], out=str(tmp_path), size=32, n_train=5,
                      n_synthetic=7, use_cache=False)
    normals = _open("toy:metal", "train", 32, 5)
    generated, source, _, _ = generate_set(cfg, "tiny-paired", 3, normals, tmp_path / "cache")
    assert [m["source"] for m in source.meta] == [normals.meta[i % 5]["source"] for i in range(7)]
    summary = write_generated(TinyPaired(), InMemoryDataset(normals, category="metal"), tmp_path / "w", n=7, seed=3,
                              batch_size=3, progress=False)
    recs = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    written = Batch.from_paths([summary.root / r["image"] for r in sorted(recs, key=lambda r: r["index"])])
    assert to_uint8(generated.image).tobytes() == to_uint8(written.image).tobytes()
    # the paste really comes from the next normal: sample 4 (normal 4) borrows from normal 0
    changed = generated.mask[4, 0] > 0
    assert torch.equal(generated.image[4][:, changed], normals.image[0][:, changed])


def test_markdown_shows_an_evaluators_interval_next_to_the_mean() -> None:
    rows = []
    for seed, (v, lo, hi) in enumerate([(0.8, 0.7, 0.9), (0.6, 0.5, 0.7)]):
        for metric, value in (("image_auroc_gain", v), ("image_auroc_gain_ci_low", lo), ("image_auroc_gain_ci_high", hi)):
            rows.append({"category": "metal", "generator": "g", "seed": seed, "evaluator": "downstream-utility",
                         "metric": metric, "value": value, "higher_is_better": True, "kind": "downstream"})
    results = {"rows": rows, "runs": [], "seconds": 1.0, "cpu_utility_profile": {},
               "config": {"generators": ["g"], "data": ["toy:metal"], "seeds": [0, 1], "size": 32, "n_train": 4,
                          "n_synthetic": 4}}
    text = markdown(results)
    assert "| g | 0.700 ± 0.100 [0.600, 0.800] |" in text
    assert "ci_low" not in text and "ci_high" not in text  # bounds are not columns of their own


def test_bench_trains_each_named_pipeline_on_the_same_set_with_its_sources(registry: Any, tmp_path: Any) -> None:
    """--pipelines: one downstream run per pipeline (its own column, its CPU scale); DRAEM's pipeline learns from the
    clean image, so the bench hands it the normal each sample was made from (not a guess by pixel matching)."""
    cfg = BenchConfig(generators=["tiny-dark"], data=["toy:metal"], evaluators=["downstream-utility"], seeds=[0],
                      out=str(tmp_path / "b"), size=32, n_train=6, n_test=20, n_synthetic=6,
                      pipelines=["ad-unet", "draem"], ratios=[0.5, 1.0],
                      evaluator_params={"downstream-utility": {"steps": 2, "batch_size": 2, "repeats": 1,
                                                               "baseline": False}})
    res = run_bench(cfg, progress=False)
    evs = res["runs"][0]["evaluators"]
    assert sorted(evs) == ["downstream-utility[ad-unet]@p=0.5", "downstream-utility[ad-unet]@p=1",
                           "downstream-utility[draem]@p=0.5", "downstream-utility[draem]@p=1"]
    for tag, ev in evs.items():
        assert ev["params"]["pipeline"] == tag.split("[")[1].split("]")[0]
        assert ev["params"]["pipeline_scale"] == "cpu"
        assert ev["params"]["anomaly_prob"] == float(tag.split("=")[1])
    assert evs["downstream-utility[draem]@p=1"]["details"]["sources"] == "given"
    assert "downstream-utility[draem]@p=1/image_auroc" in (tmp_path / "b" / "results.md").read_text()


def test_bench_refuses_an_unknown_pipeline_before_generating(registry: Any, tmp_path: Any) -> None:
    cfg = BenchConfig(generators=["tiny-dark"], data=["toy:metal"], evaluators=["downstream-utility"],
                      out=str(tmp_path / "b"), pipelines=["draem", "patchcore"])
    with pytest.raises(BenchError, match="--pipelines patchcore"):
        run_bench(cfg, progress=False)
    assert not (tmp_path / "b" / "cache").exists()
    with pytest.raises(BenchError, match="needs a downstream evaluator"):
        run_bench(BenchConfig(generators=["tiny-dark"], data=["toy:metal"], evaluators=["kid"], out=str(tmp_path / "c"),
                              pipelines=["draem"]), progress=False)
