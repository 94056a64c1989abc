"""Hybrids with learned members (fitted, loaded, or fitted by the hybrid) and ASBench's official combinations."""

from __future__ import annotations

import itertools
import json
from typing import Any, ClassVar

import pytest
import torch
from pydantic import Field
from torch import nn

from anoplug import GeneratorSpec, hookimpl
from anoplug.generator import NotFittedError, Paper, Requires
from anoplug.learned import LearnedGenerator
from anoplug.params import ParamError, Params
from anoplug.testing import make_toy_batch


class _TintParams(Params):
    side: int = Field(6, ge=2, le=32, description="square side in pixels")
    fit_steps: int = Field(20, ge=1, le=1000, description="training steps")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="fit seed")


class _Tint(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.colour = nn.Parameter(torch.zeros(3))


class TinyTint(LearnedGenerator):
    """A learned stand-in: learns the mean colour of real defects, then paints a square of it (few-shot, as AD)."""

    name = "tiny-tint"
    title = "tiny learned tint"
    category = "cutpaste"
    paper = Paper("test generator", "", 2026, "https://example.invalid")
    Params = _TintParams
    requires = Requires(fit=True, anomalies=True)
    fits: ClassVar[list[list[str]]] = []  # the labels of every fit's anomalies, to count fits

    def __init__(self, params: Any = None, **kw: Any) -> None:
        super().__init__(params, **kw)
        self.tint = _Tint()

    def modules(self) -> dict[str, nn.Module]:
        return {"tint": self.tint}

    def build(self, normals: Any, anomalies: Any, generator: torch.Generator) -> torch.Tensor:
        if anomalies is None:
            raise ValueError("tiny-tint needs anomalies")
        TinyTint.fits.append(list(anomalies.label))
        m = anomalies.mask.expand_as(anomalies.image)
        return (anomalies.image * m).sum((0, 2, 3)) / m.sum((0, 2, 3))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"tint": torch.optim.Adam(self.tint.parameters(), lr=0.1)}

    def training_step(self, data: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        return ((self.tint.colour - data) ** 2).sum()

    def sample(self, batch: Any, rngs: Any) -> list[dict]:
        h = batch.image.shape[-1] - self.params.side
        return [{"y": int(torch.randint(0, h, (1,), generator=g)), "x": int(torch.randint(0, h, (1,), generator=g))}
                for g in rngs]

    def apply(self, batch: Any, samples: Any) -> Any:
        out = batch.clone()
        s = self.params.side
        colour = self.tint.colour.detach().clamp(0, 1)[:, None, None]
        for i, p in enumerate(samples):
            out.mask[i, :, p["y"]:p["y"] + s, p["x"]:p["x"] + s] = 1
            out.image[i, :, p["y"]:p["y"] + s, p["x"]:p["x"] + s] = colour
        out.label = ["tint"] * len(out)
        return out


class _TinyPlugin:
    @hookimpl
    def anoplug_generators(self) -> list[GeneratorSpec]:
        return [GeneratorSpec("tiny-tint", TinyTint, title="tiny learned tint", needs_fit=True)]


@pytest.fixture
def registry(tmp_plugin: Any) -> Any:
    import anoplug_asbench.plugin
    import anoplug_cutpaste.plugin
    import anoplug_metrics.plugin

    for mod, name in ((anoplug_asbench.plugin, "asbench"), (anoplug_cutpaste.plugin, "cutpaste"),
                      (anoplug_metrics.plugin, "metrics")):
        tmp_plugin(mod, name)
    tmp_plugin(_TinyPlugin(), "tiny")
    TinyTint.fits.clear()
    return tmp_plugin


def _defects() -> Any:
    from anoplug.data.toy import ToyDataset

    test = ToyDataset("metal", split="test", size=32, length=10).all()
    return test[[i for i, lab in enumerate(test.label) if lab != "good"]]


def _fitted_tint() -> TinyTint:
    return TinyTint().fit(None, _defects())


def test_hybrid_with_a_fitted_learned_member_is_deterministic(registry: Any) -> None:
    import anoplug

    tint = _fitted_tint()
    assert float(tint.tint.colour.detach().abs().sum()) > 0.1  # the fit moved it
    hyb = anoplug.get_generator("hybrid", members=[tint, "cutpaste"])
    assert hyb.is_fitted and not hyb.requires.fit
    batch = make_toy_batch(10, 32)
    seeds = list(range(100, 110))
    out = hyb.generate(batch, seeds=seeds)
    chosen = [m["sample"]["member"] for m in out.meta]
    assert set(chosen) == {"tiny-tint", "cutpaste"}
    assert out.image.numpy().tobytes() == hyb.generate(batch, seeds=seeds).image.numpy().tobytes()
    part = hyb.generate(batch[[7, 2, 5]], seeds=[seeds[7], seeds[2], seeds[5]])  # whatever the batch split
    assert part.image.numpy().tobytes() == out.image[[7, 2, 5]].numpy().tobytes()
    i = chosen.index("tiny-tint")  # the learned member made its sample exactly as it does alone, with its fitted weights
    alone = tint.generate(batch[[i]], seeds=[out.meta[i]["sample"]["member_seed"]])
    assert torch.equal(alone.image[0], out.image[i])
    inside = out.mask[i, 0] > 0
    assert torch.allclose(out.image[i][:, inside].mean(1), tint.tint.colour.detach().clamp(0, 1), atol=1e-6)
    replay = hyb.generate(batch, seeds=seeds, samples=[m["sample"] for m in out.meta])
    assert torch.equal(replay.image, out.image)


def test_saved_and_loaded_members_give_the_same_mixture(registry: Any, tmp_path: Any) -> None:
    from anoplug_asbench.hybrid import Hybrid

    import anoplug

    tint = _fitted_tint()
    tint.save(tmp_path / "tint")
    batch = make_toy_batch(8, 32)
    ref = anoplug.get_generator("hybrid", members=[tint, "cutpaste"]).generate(batch, seed=3)
    by_dir = anoplug.get_generator("hybrid", members=f"tiny-tint@{tmp_path / 'tint'},cutpaste")
    assert by_dir.is_fitted
    assert torch.equal(by_dir.generate(batch, seed=3).image, ref.image)
    # a hybrid saves its fitted learned members with it and loads them back
    hyb = anoplug.get_generator("hybrid", members=[tint, "cutpaste"])
    hyb.save(tmp_path / "hyb")
    assert json.loads((tmp_path / "hyb" / "config.json").read_text())["member_dirs"] == {"tiny-tint": "members/0-tiny-tint"}
    back = Hybrid.load(tmp_path / "hyb")
    assert back.is_fitted and torch.equal(back.generate(batch, seed=3).image, ref.image)


def test_a_hybrid_fits_its_unfitted_learned_members(registry: Any) -> None:
    import anoplug

    hyb = anoplug.get_generator("hybrid", members="tiny-tint,cutpaste")
    assert hyb.requires.fit and hyb.requires.anomalies and not hyb.is_fitted
    batch = make_toy_batch(6, 32)
    with pytest.raises(NotFittedError):
        hyb.generate(batch, seed=0)
    with pytest.raises(ValueError, match="tiny-tint learns from real defects"):
        hyb.fit(batch)
    hyb.fit(batch, _defects())
    assert hyb.is_fitted and not hyb.requires.fit
    ref = anoplug.get_generator("hybrid", members=[_fitted_tint(), "cutpaste"]).generate(batch, seed=1)
    assert torch.equal(hyb.generate(batch, seed=1).image, ref.image)


def test_unknown_or_unloadable_members_are_named(registry: Any, tmp_path: Any) -> None:
    import anoplug

    with pytest.raises(LookupError, match="no-such"):
        anoplug.get_generator("hybrid", members="cutpaste,no-such")
    with pytest.raises(ParamError, match="cutpaste is procedural"):
        anoplug.get_generator("hybrid", members="cutpaste@somewhere,tiny-tint")
    with pytest.raises(ParamError, match=r"cannot load tiny-tint from .*nowhere"):
        anoplug.get_generator("hybrid", members=f"tiny-tint@{tmp_path / 'nowhere'},cutpaste")
    with pytest.raises(ParamError, match="two 'tiny-tint' instances"):
        anoplug.get_generator("hybrid", members=[TinyTint(), TinyTint()])
    with pytest.raises(ParamError, match="NAME or NAME@DIR"):
        anoplug.get_generator("hybrid", members="cutpaste,tiny-tint@")


def test_asbench_preset_is_exactly_the_official_eleven() -> None:
    """All 6 pairs, 4 triples and the quadruple of {Fractal, DRAEM, MemSeg, AD}.

    Source: M-3LAB/ASBench @ 9c0bafc, DRAEM/train_DRAEM.py lines 295-333 (the Dataset_name
    branches that build a ConcatDataset) and destseg/cal_appixel.py lines 14-24.
    """
    from anoplug_asbench.presets import ASBENCH_HYBRIDS, PRESETS, expand_preset

    members = {"fractal", "draem", "memseg", "anomalydiffusion"}
    every = {frozenset(c) for k in (2, 3, 4) for c in itertools.combinations(sorted(members), k)}
    names = expand_preset("asbench-hybrids")
    assert len(names) == 11 == len(every) and {frozenset(n.split("+")) for n in names} == every
    assert [n for n, _ in ASBENCH_HYBRIDS][:2] == ["Fractal+DRAEM", "DRAEM+MemSeg"]
    assert names[0] == "fractal+draem" and names[6] == "fractal+draem+memseg+anomalydiffusion"
    study = PRESETS["asbench-hybrid-study"]
    assert study[:4] == ("anomalydiffusion", "draem", "fractal", "memseg") and study[4:] == tuple(names)
    with pytest.raises(KeyError, match="asbench-hybrids"):
        expand_preset("no-such")


def test_cli_preset_expands_and_says_what_it_knows() -> None:
    import argparse

    from anoplug_asbench.cli import BenchUsageError, _generators, _loads

    names = _generators(argparse.Namespace(preset=["asbench-hybrids"], generators="draem,fractal+draem"))
    assert len(names) == 12 and names[-1] == "draem"  # the preset's 11, then the extra one (duplicates dropped)
    with pytest.raises(BenchUsageError, match="asbench-hybrids"):
        _generators(argparse.Namespace(preset=["nope"], generators=""))
    with pytest.raises(BenchUsageError, match="--preset"):
        _generators(argparse.Namespace(preset=None, generators=""))
    assert _loads(["anomalydiffusion=out/ad/{category}"]) == {"anomalydiffusion": "out/ad/{category}"}
    with pytest.raises(BenchUsageError, match="NAME=DIR"):
        _loads(["anomalydiffusion"])


def test_bench_fits_a_learned_member_once_on_the_reference_shots(registry: Any, tmp_path: Any) -> None:
    from anoplug_asbench.bench import BenchConfig, run_bench, split_shots

    from anoplug.data.toy import ToyDataset

    cfg = BenchConfig(generators=["tiny-tint+cutpaste", "cutpaste+tiny-tint"], data=["toy:metal?difficulty=hard"],
                      evaluators=["mask-precision"], out=str(tmp_path / "b"), size=32, n_train=4, n_synthetic=6)
    res = run_bench(cfg, progress=False)
    assert len(TinyTint.fits) == 1  # one fit, shared by both hybrids
    test = ToyDataset("metal", split="test")
    labels = [test.label(i) for i in range(len(test))]
    refs, _ = split_shots(labels)
    assert TinyTint.fits[0] == [labels[i] for i in refs]  # fitted on the reference shots, never on held-out defects
    assert {r["category"] for r in res["rows"]} == {"metal[difficulty=hard]"}
    # a saved one is used instead of fitting
    tint = _fitted_tint()
    tint.save(tmp_path / "saved" / "metal")
    TinyTint.fits.clear()
    cfg.load = {"tiny-tint": str(tmp_path / "saved" / "{category}")}
    cfg.out = str(tmp_path / "c")
    run_bench(cfg, progress=False)
    assert TinyTint.fits == []


def test_bench_refuses_what_it_cannot_fit_or_load(registry: Any, tmp_path: Any) -> None:
    from anoplug_asbench.bench import BenchConfig, BenchError, run_bench

    def bench(**kw: Any) -> None:
        run_bench(BenchConfig(data=["toy:metal"], evaluators=["mask-precision"], out=str(tmp_path), size=32, n_train=2,
                              n_synthetic=2, **kw), progress=False)

    with pytest.raises(LookupError, match="no-such"):
        bench(generators=["cutpaste+no-such"])
    with pytest.raises(BenchError, match=r"no saved tiny-tint in .*nowhere"):
        bench(generators=["cutpaste+tiny-tint"], load={"tiny-tint": str(tmp_path / "nowhere")})
    with pytest.raises(BenchError, match="neither a directory written by tiny-tint.save"):
        bench(generators=[f"cutpaste+tiny-tint@{tmp_path / 'nowhere'}"])
    with pytest.raises(BenchError, match="cutpaste is procedural"):
        bench(generators=["cutpaste"], load={"cutpaste": str(tmp_path)})
    assert TinyTint.fits == []  # nothing was trained before refusing


def test_bench_refuses_reference_shots_without_masks(registry: Any) -> None:
    from anoplug_asbench.bench import BenchConfig, BenchError, _check_fit_data

    from anoplug.registry import get_registry

    refs = _defects()
    refs.mask[1] = 0  # a defect without a ground-truth mask cannot teach a few-shot method where the defect is
    cfg = BenchConfig(generators=["cutpaste+tiny-tint"], data=["toy:metal"])
    with pytest.raises(BenchError, match=r"tiny-tint learns from real defects.*--load tiny-tint=DIR"):
        _check_fit_data(cfg, get_registry(), "toy:metal", refs)
    cfg.load = {"tiny-tint": "somewhere"}  # a loaded one needs no reference shots
    _check_fit_data(cfg, get_registry(), "toy:metal", refs)


def test_fitted_anomalydiffusion_member_is_deterministic_per_sample() -> None:
    """ASBench's learned member itself (a tiny random base model, a few steps): same seeds, same bytes, any split."""
    anomalydiffusion = pytest.importorskip("anoplug_anomalydiffusion")
    import anoplug

    fast = {"base_model": "tiny-random", "steps": 3, "mask_steps": 2, "batch_size": 2, "fit_steps": 2, "mask_fit_steps": 1}
    ad = anoplug.get_generator("anomalydiffusion", **fast).fit(None, _defects())
    assert isinstance(ad, anomalydiffusion.anomalydiffusion.AnomalyDiffusion) and ad.is_fitted
    hyb = anoplug.get_generator("hybrid", members=[ad, "draem"])
    batch = make_toy_batch(4, 32)
    seeds = [5, 6, 7, 8]
    out = hyb.generate(batch, seeds=seeds)
    chosen = [m["sample"]["member"] for m in out.meta]
    assert "anomalydiffusion" in chosen
    assert torch.equal(hyb.generate(batch, seeds=seeds).image, out.image)
    i = chosen.index("anomalydiffusion")
    part = hyb.generate(batch[[i]], seeds=[seeds[i]])
    assert torch.equal(part.image[0], out.image[i])
    alone = ad.generate(batch[[i]], seeds=[out.meta[i]["sample"]["member_seed"]])
    assert torch.equal(alone.image[0], out.image[i])
