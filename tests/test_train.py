"""anoplug.train.Trainer: each mechanism of the loop, with a test that fails when it is removed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from anoplug.train import Trainer, latest_checkpoint
from anoplug.train.log import plot_history, read_history, smooth, write_history

X = torch.linspace(-1, 1, 16).reshape(-1, 1)
Y = 3 * X + 0.5


def _model(seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    m = nn.Linear(1, 1)
    with torch.no_grad():
        m.weight.copy_(torch.randn(1, 1, generator=g))
        m.bias.zero_()
    return m


def _noisy_step(model: nn.Module):
    """A step whose data depends on the generator, so a resumed run must restore its state."""
    def step(ctx):
        idx = torch.randint(0, len(X), (4,), generator=ctx.generator)
        noise = 0.1 * torch.randn(4, 1, generator=ctx.generator)
        return ((model(X[idx]) - Y[idx] - noise) ** 2).mean()
    return step


def _trainer(model: nn.Module, steps: int, schedule: bool = True, **kw) -> Trainer:
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = {"adam": torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)} if schedule else {}
    return Trainer({"m": model}, {"adam": opt}, _noisy_step(model), steps=steps,
                   generator=torch.Generator().manual_seed(1), schedulers=sched, **kw)


def test_the_loss_falls_and_the_history_has_one_row_per_update():
    m = _model()
    hist = _trainer(m, 60, schedule=False).fit()
    assert len(hist) == 60 and all(set(r) == {"loss"} for r in hist)
    assert sum(r["loss"] for r in hist[-5:]) < 0.5 * sum(r["loss"] for r in hist[:5])


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path):
    """Weights, Adam moments, the LR schedule, the EMA and the generator all come back."""
    def save(d):
        from safetensors.torch import save_file
        save_file(dict(m_live.state_dict()), str(d / "w.safetensors"))

    def load(d):
        from safetensors.torch import load_file
        m_live.load_state_dict(load_file(str(d / "w.safetensors")))

    full = _model()
    ref = _trainer(full, 10, ema={"m": 0.9}, clip_grad_norm=0.5).fit()
    m_live = _model()
    first = _trainer(m_live, 10, ema={"m": 0.9}, clip_grad_norm=0.5, checkpoint_every=4, checkpoint_dir=tmp_path,
                     save_weights=save, load_weights=load)
    first.fit()
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["step-000004", "step-000008"]
    assert latest_checkpoint(tmp_path).name == "step-000008"
    m_live = _model(seed=5)  # a different start: everything must come from the checkpoint
    again = _trainer(m_live, 10, ema={"m": 0.9}, clip_grad_norm=0.5, save_weights=save, load_weights=load)
    hist = again.fit(resume_from=tmp_path / "step-000004")
    assert torch.equal(m_live.weight, full.weight) and torch.equal(m_live.bias, full.bias)
    assert hist == ref
    fresh_ema = _trainer(_model(), 10, ema={"m": 0.9}, clip_grad_norm=0.5)
    fresh_ema.fit()
    assert torch.equal(again.ema["m"].module.weight, fresh_ema.ema["m"].module.weight)


def test_resume_refuses_another_run(tmp_path):
    m = _model()
    _trainer(m, 6, checkpoint_every=3, checkpoint_dir=tmp_path, meta={"params": {"lr": 1}}).fit()
    with pytest.raises(ValueError, match="6-step run"):
        _trainer(_model(), 8, meta={"params": {"lr": 1}}).fit(resume_from=tmp_path / "step-000003")
    with pytest.raises(ValueError, match="another params"):
        _trainer(_model(), 6, meta={"params": {"lr": 2}}).fit(resume_from=tmp_path / "step-000003")
    with pytest.raises(ValueError, match="ema"):
        _trainer(_model(), 6, ema={"m": 0.5}, meta={"params": {"lr": 1}}).fit(resume_from=tmp_path / "step-000003")


def test_gradient_accumulation_of_two_halves_equals_one_full_batch():
    """K micro-steps of B/K samples make the update of one step on B (mean losses)."""
    def run(accum: int) -> nn.Linear:
        m = _model()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)

        def step(ctx):
            part = X.chunk(accum)[ctx.micro]
            return ((m(part) - 3 * part - 0.5) ** 2).mean()
        Trainer({"m": m}, {"sgd": opt}, step, steps=3, generator=torch.Generator(),
                gradient_accumulation_steps=accum).fit()
        return m

    one, two = run(1), run(2)
    torch.testing.assert_close(two.weight, one.weight, rtol=1e-6, atol=1e-7)
    no_accum = _model()  # without accumulation, each half would be its own update
    opt = torch.optim.SGD(no_accum.parameters(), lr=0.1)
    Trainer({"m": no_accum}, {"sgd": opt}, lambda ctx: ((no_accum(X.chunk(2)[ctx.step % 2]) - 3 * X.chunk(2)[ctx.step % 2]
                                                          - 0.5) ** 2).mean(), steps=6, generator=torch.Generator()).fit()
    assert not torch.allclose(no_accum.weight, one.weight)


def test_clipping_bounds_the_global_gradient_norm():
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for g in self.param_groups for p in g["params"])))
            return super().step(closure)

    def run(clip):
        seen.clear()
        m = _model()
        Trainer({"m": m}, {"sgd": Spy(m.parameters(), lr=1e-3)}, lambda ctx: 100 * ((m(X) - Y) ** 2).mean(), steps=2,
                generator=torch.Generator(), clip_grad_norm=clip).fit()
        return list(seen)

    assert max(run(None)) > 1.0
    assert max(run(1.0)) == pytest.approx(1.0, rel=1e-5)


def test_ema_follows_the_formula_and_apply_ema_installs_it():
    m = _model()
    weights = []
    opt = torch.optim.SGD(m.parameters(), lr=0.1)

    def step(ctx):
        return ((m(X) - Y) ** 2).mean()

    tr = Trainer({"m": m}, {"sgd": opt}, step, steps=4, generator=torch.Generator(), ema={"m": 0.5},
                 progress=lambda s, t, row: weights.append(m.weight.detach().clone()))
    tr.fit()
    ema = weights[0]
    for w in weights[1:]:
        ema = 0.5 * ema + 0.5 * w
    torch.testing.assert_close(tr.ema["m"].module.weight, ema)
    assert not torch.equal(m.weight, ema)  # the live weights stay live ...
    with tr.ema_weights():
        torch.testing.assert_close(m.weight, ema)
    assert torch.equal(m.weight, weights[-1])
    m2 = _model()
    Trainer({"m": m2}, {"sgd": torch.optim.SGD(m2.parameters(), lr=0.1)}, lambda ctx: ((m2(X) - Y) ** 2).mean(), steps=4,
            generator=torch.Generator(), ema={"m": 0.5}, apply_ema=True).fit()
    torch.testing.assert_close(m2.weight, ema)  # ... unless the run installs the average at its end


def test_manual_optimisation_steps_only_what_the_step_asks_for():
    a, b = _model(0), _model(1)
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    b0 = b.weight.detach().clone()

    def step(ctx):
        loss = ((a(X) - Y) ** 2).mean()
        ctx.backward(loss)
        ctx.optimizer_step("a")
        return {"loss_a": loss}

    hist = Trainer({"a": a, "b": b}, {"a": oa, "b": ob}, step, steps=3, generator=torch.Generator(),
                   manual_optimization=True).fit()
    assert torch.equal(b.weight, b0) and hist[-1]["loss_a"] < hist[0]["loss_a"]
    with pytest.raises(KeyError, match="no optimiser"):
        Trainer({"a": a}, {"a": oa}, lambda ctx: ctx.optimizer_step("zz"), steps=1, generator=torch.Generator(),
                manual_optimization=True).fit()


def test_bf16_mixed_precision_runs_the_step_under_autocast_and_back():
    dtypes = []
    m = _model()

    def step(ctx):
        out = m(X)
        dtypes.append(out.dtype)
        return ((out.float() - Y) ** 2).mean()

    Trainer({"m": m}, {"sgd": torch.optim.SGD(m.parameters(), lr=0.1)}, step, steps=1, generator=torch.Generator(),
            mixed_precision="bf16").fit()
    Trainer({"m": m}, {"sgd": torch.optim.SGD(m.parameters(), lr=0.1)}, step, steps=1, generator=torch.Generator()).fit()
    assert dtypes == [torch.bfloat16, torch.float32] and m.weight.dtype == torch.float32


def test_bad_settings_name_the_parameter():
    m = _model()
    opt = {"sgd": torch.optim.SGD(m.parameters(), lr=0.1)}
    for kw, word in (({"steps": -1}, "steps"), ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
                     ({"checkpoint_every": 2}, "checkpoint_dir"), ({"ema": {"x": 0.9}}, "ema"),
                     ({"ema": {"m": 1.0}}, "decay"), ({"mixed_precision": "fp8"}, "mixed_precision")):
        with pytest.raises(ValueError, match=word):
            Trainer({"m": m}, opt, lambda ctx: m(X).sum(), generator=torch.Generator(), **{"steps": 1, **kw})


def test_history_csv_round_trip_and_plot(tmp_path):
    hist = [{"loss": 0.1 + i / 3, "phase": "image" if i < 2 else "mask", "n": i} for i in range(4)]
    assert read_history(write_history(hist, tmp_path / "loss.csv")) == hist
    assert smooth([1.0, 3.0, 5.0], window=2) == [1.0, 2.0, 4.0]
    ax = plot_history(hist, ["loss", "n"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "n"]


def test_print_every_prints_every_nth_step_and_the_last(capsys) -> None:
    from anoplug.train.log import print_every

    cb = print_every(2)
    for step in range(1, 6):
        cb(step, 5, {"loss": 0.5 / step, "phase": "g"})
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in lines] == ["2/5", "4/5", "5/5"]
    assert "loss=0.250" in lines[0] and "phase" not in lines[0]
