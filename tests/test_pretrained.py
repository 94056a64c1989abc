"""Shipped checkpoints (``Generator.pretrained`` / ``from_pretrained``) and the ``defect_type`` condition.

A learned plugin ships small weights in its package so that ``anoplug generate NAME`` works on
a fresh clone without ``--fit``; these tests build such a plugin in a temporary directory.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from anoplug import GeneratorSpec, hookimpl
from anoplug.cli import main
from anoplug.conditions import ConditionError, Conditions
from anoplug.data.inputs import ConditionSource
from anoplug.testing import make_toy_batch

MODULE = '''
import torch
from anoplug.generator import Requires
from anoplug.learned import LearnedGenerator
from pydantic import Field
from anoplug.params import Params

class TintParams(Params):
    fit_steps: int = Field(2, ge=0, description="steps")
    seed: int = Field(0, ge=0, description="seed")
    strength: float = Field(1.0, ge=0, le=1, description="how much of the learned colour is painted (generation only)")

class Tint(LearnedGenerator):
    """Adds a learned colour inside the left half; the colour per defect type is a parameter tensor."""
    name = "test-tint"
    Params = TintParams
    requires = Requires(fit=True, accepts=("defect_type",))
    pretrained = {"toy": "weights/toy", "other": "weights/other"}
    generation_params = ("strength",)
    types = ("scratch", "hole")

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.net = torch.nn.Embedding(2, 3)

    def build(self, normals, anomalies, generator):
        return None

    def optimizers(self):
        return {"net": torch.optim.SGD(self.net.parameters(), lr=0.1)}

    def training_step(self, data, step, generator):
        return (self.net.weight - 0.5).pow(2).sum()

    def modules(self):
        return {"net": self.net}

    def sample(self, batch, rngs):
        return [{} for _ in range(len(batch))]

    def apply(self, batch, samples):
        types = batch.conditions.defect_type or ["scratch"] * len(batch)
        colour = self.net(torch.tensor([self.types.index(t) for t in types])).detach()
        mask = torch.zeros_like(batch.image[:, :1])
        mask[..., : batch.image.shape[-1] // 2] = 1
        paint = batch.image + self.params.strength * (colour[:, :, None, None].clamp(0, 1) - batch.image)
        image = batch.image * (1 - mask) + paint * mask
        from dataclasses import replace
        return replace(batch, image=image, mask=mask, label=list(types))
'''


@pytest.fixture
def tint(tmp_path, tmp_plugin, monkeypatch):
    pkg = tmp_path / "tintpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tint.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("tintpkg.tint")
    cls = mod.Tint
    for name, value in (("toy", 0.8), ("other", 0.2)):
        g = cls()
        g.fit(None, steps=1)
        with torch.no_grad():
            g.net.weight.fill_(value)
        g.save(pkg / "weights" / name)

    class P:
        @hookimpl
        def anoplug_generators(self):
            return [GeneratorSpec("test-tint", cls, title="tint", category="speed", needs_fit=True)]

    tmp_plugin(P(), "tint-plugin")
    yield cls
    sys.modules.pop("tintpkg.tint", None)
    sys.modules.pop("tintpkg", None)


def test_from_pretrained_loads_the_first_by_default_and_others_by_name(tint, tmp_path):
    assert tint.from_pretrained().is_fitted
    assert float(tint.from_pretrained().net.weight[0, 0].detach()) == pytest.approx(0.8)
    assert float(tint.from_pretrained("other").net.weight[0, 0]) == pytest.approx(0.2)
    assert tint.pretrained_path("other") == tmp_path / "tintpkg" / "weights" / "other"
    assert float(tint.from_pretrained(tmp_path / "tintpkg" / "weights" / "other").net.weight[0, 0]) == \
        pytest.approx(0.2)  # any saved directory too
    with pytest.raises(ValueError, match="neither a shipped checkpoint .*shipped: toy, other"):
        tint.from_pretrained("nope")


def test_cli_generates_from_the_shipped_default_without_fit(tint, tmp_path, capsys):
    code = main(["generate", "test-tint", "--data", "toy:metal", "-n", "3", "--size", "32", "--out",
                 str(tmp_path / "o"), "-q"])
    out, err = capsys.readouterr()
    assert code == 0 and "shipped checkpoint 'toy'" in out, err
    code = main(["generate", "test-tint", "--data", "toy:metal", "-n", "2", "--size", "32", "--out",
                 str(tmp_path / "o2"), "-q", "--pretrained", "other", "--defect-type", "hole,scratch"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "o2" / "metal" / "manifest.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["hole", "scratch"]


@pytest.mark.parametrize("argv, needle", [
    (["--pretrained", "nope"], "--pretrained: test-tint: 'nope' is neither a shipped checkpoint"),
    (["--pretrained", "toy", "--fit"], "--pretrained loads a shipped checkpoint"),
    (["-p", "seed=3"], "--param seed cannot be combined with --pretrained (or a shipped default): the saved "
                       "parameters describe the trained model (generation-time parameters of test-tint: strength)"),
    (["-p", "strength=2"], "invalid parameter 'strength'"),
    (["--defect-type", " ,"], "--defect-type"),
])
def test_cli_pretrained_errors_are_one_line(tint, tmp_path, capsys, argv, needle):
    code = main(["generate", "test-tint", "--data", "toy:metal", "-n", "1", "--size", "32", "--out",
                 str(tmp_path / "o"), "-q", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_pretrained_for_a_method_that_ships_none(capsys, tmp_path):
    code = main(["generate", "draem", "--data", "toy:metal", "-n", "1", "--out", str(tmp_path / "o"),
                 "--pretrained", "x"])
    assert code == 2 and "ships no pretrained checkpoint" in capsys.readouterr().err


def test_info_lists_shipped_checkpoints(tint, capsys):
    assert main(["info", "test-tint"]) == 0
    out = capsys.readouterr().out
    assert "shipped:   toy, other" in out and "defect_type (optional; --defect-type" in out


def test_defect_type_condition_is_validated_sliced_and_cycled():
    b = make_toy_batch(3, 16).with_conditions(defect_type=["a", "b", "c"])
    assert b[[2, 0]].conditions.defect_type == ["c", "a"]
    with pytest.raises(ConditionError, match="conditions.defect_type must hold 3"):
        Conditions(defect_type=["a"]).validate(3, (16, 16))
    src = ConditionSource(defect_type="hole, scratch")
    assert src.conditions([0, 1, 2], (16, 16))["defect_type"] == ["hole", "scratch", "hole"]
    assert src.for_sample(1) == {"defect_type": "scratch"} and src.names() == ("defect_type",)


def test_explorer_by_name_uses_the_shipped_checkpoint(tint):
    pytest.importorskip("ipywidgets")
    from anoplug.widgets import explore

    ex = explore("test-tint", make_toy_batch(1, 32))
    assert ex.result is not None and ex.result.image.shape[-1] == 32


def test_shipped_weights_of_the_kit(tint):
    from anoplug.testing import LearnedGeneratorConformance

    class Kit(LearnedGeneratorConformance):
        generator_class = tint
    Kit().test_shipped_checkpoints_load_and_generate()
    assert Path(tint.pretrained_path()).is_dir()


def test_generation_time_parameters_change_over_a_shipped_checkpoint_and_nothing_else(tint, tmp_path):
    """``generation_params`` may change on a loaded model (CLI ``-p`` with a shipped or saved one); the
    parameters that describe the weights may not, from Python or the CLI."""
    from anoplug.params import ParamError

    batch = make_toy_batch(2, 16)
    full = tint.from_pretrained().generate(batch, seed=0)
    none = tint.from_pretrained().with_generation_params(strength=0.0).generate(batch, seed=0)
    assert torch.equal(none.image, batch.image) and not torch.equal(full.image, batch.image)
    with pytest.raises(ParamError, match="'seed' describes the trained model.*generation-time parameters: strength"):
        tint.from_pretrained().with_generation_params(seed=1)
    assert main(["generate", "test-tint", "--data", "toy:metal", "-n", "2", "--size", "32", "--out",
                 str(tmp_path / "o"), "-q", "-p", "strength=0"]) == 0
    rec = json.loads((tmp_path / "o" / "metal" / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["params"]["strength"] == 0.0


def test_mark_fitted_is_the_public_way_to_declare_outside_weights_trained(tint):
    gen = tint()
    assert not gen.is_fitted
    assert gen.mark_fitted() is gen and gen.is_fitted
    assert not gen.mark_fitted(False).is_fitted


def test_a_training_free_method_without_declared_generation_params_may_change_any(tmp_path):
    """Nothing a training-free method saves describes learned weights: ``--load DIR -p NAME=V`` takes any
    parameter; a learned method with none declared takes none."""
    from anoplug import get_generator
    from anoplug.generator import Generator, Requires

    draem = get_generator("draem")
    assert not type(draem).generation_params and not type(draem).requires.fit
    assert set(type(draem).generation_param_names()) == set(type(draem).Params.model_fields)
    draem.save(tmp_path / "d")
    assert main(["generate", "draem", "--load", str(tmp_path / "d"), "--data", "toy:metal", "-n", "2", "--size", "32",
                 "--out", str(tmp_path / "o"), "-q", "--workers", "1", "-p", "probability=1"]) == 0
    rec = json.loads((tmp_path / "o" / "metal" / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["params"]["probability"] == 1.0

    class Learned(Generator):
        name = "test-learned-nothing-declared"
        requires = Requires(fit=True)
    assert Learned.generation_param_names() == ()
