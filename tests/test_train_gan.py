"""GANTrainer / GANStep: a real learning test on a 2-D Gaussian mixture, each loss and penalty on
hand-computed values, the n_critic alternation, spectral norm, the image pool, the generator EMA
and resume-equals-uninterrupted."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from anoplug.train import StepContext, Trainer
from anoplug.train.gan import (
    POOL_FILE,
    GANBatch,
    GANStep,
    GANTrainer,
    ImagePool,
    apply_spectral_norm,
    gradient_penalty,
    hinge_d_loss,
    hinge_g_loss,
    lsgan_d_loss,
    lsgan_g_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    r1_penalty,
    refresh_spectral_norm,
    wgan_d_loss,
    wgan_g_loss,
)


def _seeded(seed: int, build):
    """Build modules with reproducible default init without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _mlp(i: int, o: int, h: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), act(), nn.Linear(h, h), act(), nn.Linear(h, o))


# -- (a) a real learning test: 8 Gaussians on a ring ---------------------------------------------------
RADIUS, STD, MODES = 2.0, 0.05, 8
CENTRES = RADIUS * torch.tensor([[math.cos(2 * math.pi * k / MODES), math.sin(2 * math.pi * k / MODES)]
                                 for k in range(MODES)])
TARGET_COV = (RADIUS ** 2 / 2 + STD ** 2) * torch.eye(2)  # uniform over the ring's 8 angles, plus the spread


def _mixture(n: int, g: torch.Generator) -> torch.Tensor:
    return CENTRES[torch.randint(MODES, (n,), generator=g)] + STD * torch.randn(n, 2, generator=g)


def _mixture_stats(x: torch.Tensor) -> dict:
    """High-quality share (within 3σ of a centre), modes with ≥ 4 % of all samples there, moment errors."""
    dist, nearest = torch.cdist(x, CENTRES).min(1)
    hq = dist < 3 * STD
    share = torch.bincount(nearest[hq], minlength=MODES).float() / len(x)
    return {"hq": float(hq.float().mean()), "modes": int((share >= 0.04).sum()), "share": share.tolist(),
            "mean_err": float(x.mean(0).norm()), "cov_err": float((torch.cov(x.T) - TARGET_COV).norm())}


def _passes(s: dict) -> bool:
    return s["hq"] >= 0.5 and s["modes"] >= 6 and s["mean_err"] < 0.25 and s["cov_err"] < 0.4


@pytest.mark.parametrize("seed", [0])
def test_a_tiny_gan_learns_the_eight_gaussians_ring(seed):
    # Measured (this config, 1000 steps): seeds 0-5 all cover 8/8 modes with >= 5 % each, hq 0.67-0.75,
    # |mean| <= 0.12, ||cov - target||_F <= 0.12; the untrained G covers none.
    zdim, batch = 4, 128
    G = _seeded(seed, lambda: _mlp(zdim, 2, 128))
    D = _seeded(seed + 100, lambda: _mlp(2, 1, 128, nn.LeakyReLU))

    def sample(ctx: StepContext) -> GANBatch:
        return GANBatch(_mixture(batch, ctx.generator), torch.randn(batch, zdim, generator=ctx.generator))

    def generated() -> torch.Tensor:
        with torch.no_grad():
            return G(torch.randn(4000, zdim, generator=torch.Generator().manual_seed(999)))

    before = _mixture_stats(generated())
    assert not _passes(before) and before["modes"] == 0  # the check is not met without training G
    gan = GANStep(G, D, sample, loss="nonsaturating", r1_gamma=0.1)
    GANTrainer(gan, steps=1000, generator=torch.Generator().manual_seed(seed), ema_decay=0.99,
               g_optimizer=torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999)),
               d_optimizer=torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))).fit()
    after = _mixture_stats(generated())
    assert _passes(after), after
    assert after["cov_err"] < 0.2 * before["cov_err"]


# -- (b) losses and penalties on hand-computed values -------------------------------------------------
REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([0.5, -3.0])


def _sp(x: float) -> float:
    return math.log1p(math.exp(x))


def test_each_loss_on_hand_computed_logits():
    ns_d = (_sp(-2.0) + _sp(1.0)) / 2 + (_sp(0.5) + _sp(-3.0)) / 2
    assert nonsaturating_d_loss(REAL, FAKE).item() == pytest.approx(ns_d)
    bce = F.binary_cross_entropy_with_logits(REAL, torch.ones(2)) + F.binary_cross_entropy_with_logits(FAKE, torch.zeros(2))
    assert nonsaturating_d_loss(REAL, FAKE).item() == pytest.approx(bce.item())
    assert nonsaturating_g_loss(FAKE).item() == pytest.approx((_sp(-0.5) + _sp(3.0)) / 2)
    # hinge: relu(1 - [2, -1]) = [0, 2]; relu(1 + [0.5, -3]) = [1.5, 0]
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(1.0 + 0.75)
    assert hinge_g_loss(FAKE).item() == pytest.approx(1.25)
    # LSGAN: ½·mean([1, 4]) + ½·mean([0.25, 9]); G: ½·mean([0.25, 16])
    assert lsgan_d_loss(REAL, FAKE).item() == pytest.approx(1.25 + 2.3125)
    assert lsgan_g_loss(FAKE).item() == pytest.approx(4.0625)
    # WGAN: E[D(fake)] - E[D(real)] = -1.25 - 0.5; G: 1.25
    assert wgan_d_loss(REAL, FAKE).item() == pytest.approx(-1.75)
    assert wgan_g_loss(FAKE).item() == pytest.approx(1.25)


def test_gradient_penalty_is_zero_for_a_unit_lipschitz_linear_critic_and_positive_otherwise():
    real, fake = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(6, 3)
    w = torch.tensor([0.6, 0.0, 0.8])  # unit norm: ‖∇‖ = 1 everywhere
    gp = gradient_penalty(lambda x: x @ w, real, fake, torch.Generator().manual_seed(1))
    assert gp.item() == pytest.approx(0.0, abs=1e-12)
    w2 = (2 * w).requires_grad_(True)
    gp2 = gradient_penalty(lambda x: x @ w2, real, fake, torch.Generator().manual_seed(1))
    assert gp2.item() == pytest.approx(1.0)  # (2 - 1)²
    gp2.backward()
    assert w2.grad is not None and w2.grad.norm() > 0  # create_graph: the penalty trains the critic
    # a non-linear critic: the penalty is taken at x̂ = ε·real + (1-ε)·fake with ε from the generator
    eps = torch.rand(6, generator=torch.Generator().manual_seed(1)).view(-1, 1)
    x_hat = eps * real + (1 - eps) * fake  # ∇ ½‖x‖² = x
    want = (x_hat.norm(dim=1) - 1).square().mean()
    got = gradient_penalty(lambda x: 0.5 * x.square().sum(1), real, fake, torch.Generator().manual_seed(1))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_r1_is_the_mean_squared_gradient_norm_on_reals():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = x.pow(3).sum(1)  # ∇ = 3x²
    want = (3 * x.detach() ** 2).square().sum(1).mean()
    assert r1_penalty(out, x).item() == pytest.approx(want.item(), rel=1e-6)


def test_lazy_r1_is_applied_every_k_d_updates_with_weight_gamma_over_2_times_k():
    G, D = nn.Linear(2, 2), nn.Linear(2, 1)
    seen_w = []

    def sample(ctx):
        seen_w.append(D.weight.detach().clone())  # D as the coming D update sees it
        return torch.randn(4, 2, generator=ctx.generator), torch.randn(4, 2, generator=ctx.generator)

    gan = GANStep(G, D, sample, r1_gamma=2.0, r1_every=2)
    hist = GANTrainer(gan, steps=4, generator=torch.Generator().manual_seed(0)).fit()
    for step, row in enumerate(hist):
        if step % 2 == 0:  # linear D: ‖∇_x D‖² = ‖w‖²; term = γ/2 · k · that = 2‖w‖²
            assert row["d/r1"] == pytest.approx(2.0 * float(seen_w[step].square().sum()), rel=1e-5)
        else:
            assert "d/r1" not in row


# -- (c) the alternation --------------------------------------------------------------------------------
@pytest.mark.parametrize("g_batch, draws_per_step", [("fresh", 4), ("reuse", 3)])
def test_n_critic_d_updates_then_one_g_update_per_step(g_batch, draws_per_step):
    G, D = _seeded(0, lambda: _mlp(2, 2, 8)), _seeded(1, lambda: _mlp(2, 1, 8))
    og, od = torch.optim.SGD(G.parameters(), lr=0.01), torch.optim.SGD(D.parameters(), lr=0.01)
    order: list[str] = []
    og.register_step_post_hook(lambda *a: order.append("G"))
    od.register_step_post_hook(lambda *a: order.append("D"))
    draws = []

    def sample(ctx):
        draws.append(ctx.step)
        return torch.randn(8, 2, generator=ctx.generator), torch.randn(8, 2, generator=ctx.generator)

    gan = GANStep(G, D, sample, loss="wgan-gp", n_critic=3, g_batch=g_batch)
    hist = Trainer({"G": G, "D": D}, {"G": og, "D": od}, gan, steps=4, generator=torch.Generator().manual_seed(0),
                   manual_optimization=True).fit()  # GANStep is a plain step_fn of the Trainer
    assert "".join(order) == "DDDG" * 4
    assert draws == [s for s in range(4) for _ in range(draws_per_step)]
    assert all(p.requires_grad for p in D.parameters())  # D is frozen only during the G update
    assert {"d_loss", "g_loss", "d/adv", "d/gp", "g/adv"} <= set(hist[0])
    assert hist[0]["d/gp"] > 0


def test_custom_losses_and_extra_terms_drive_the_update():
    """A zero adversarial pair plus an L2 ``g_extra`` term: G learns exactly that term."""
    G, D = nn.Linear(2, 2), nn.Linear(2, 1)
    target = torch.tensor([3.0, -2.0])
    zero = (lambda r, f: 0.0 * (r.sum() + f.sum()), lambda f: 0.0 * f.sum())

    def g_extra(ctx, batch, fake, fake_out):
        return {"l2": (fake - target).square().mean()}

    gan = GANStep(G, D, lambda ctx: (torch.zeros(4, 2), torch.randn(4, 2, generator=ctx.generator)), loss=zero,
                  g_extra=g_extra)
    hist = GANTrainer(gan, steps=60, generator=torch.Generator().manual_seed(0),
                      g_optimizer=torch.optim.Adam(G.parameters(), lr=0.1)).fit()
    assert hist[-1]["g/l2"] < 0.05 * hist[0]["g/l2"]
    assert hist[-1]["g_loss"] == pytest.approx(hist[-1]["g/adv"] + hist[-1]["g/l2"])


# -- (d) spectral norm -------------------------------------------------------------------------------------
def _sigma(layer: nn.Module) -> float:
    w = layer.weight.detach()
    if isinstance(layer, nn.ConvTranspose2d):
        w = w.transpose(0, 1)  # torch's spectral_norm normalises ConvTranspose along dim 1
    return float(torch.linalg.matrix_norm(w.flatten(1), ord=2))


def test_spectral_norm_makes_every_layers_top_singular_value_one_and_skips_what_it_is_told():
    net = _seeded(0, lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 3), nn.Flatten(),
                                           nn.Linear(4 * 6 * 6, 16), nn.Linear(16, 1)))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(5.0)
    head_sigma = _sigma(net[4])
    assert all(_sigma(net[i]) > 1.5 for i in (0, 1, 3))
    apply_spectral_norm(net, skip=["4"])
    net.train()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for _ in range(30):  # one power iteration per training-mode forward
            net(x)
    net.eval()
    for i in (0, 1, 3):
        assert _sigma(net[i]) == pytest.approx(1.0, abs=1e-2)
    assert _sigma(net[4]) == pytest.approx(head_sigma)  # skipped
    assert not hasattr(net[4], "parametrizations")
    apply_spectral_norm(net)  # idempotent on normalised layers, picks up the rest
    assert len(net[0].parametrizations.weight) == 1 and hasattr(net[4], "parametrizations")


def test_refresh_spectral_norm_repairs_averaged_power_iteration_vectors():
    lin = apply_spectral_norm(_seeded(0, lambda: nn.Linear(6, 5)))
    refresh_spectral_norm(lin, 50)
    lin.eval()
    assert _sigma(lin) == pytest.approx(1.0, abs=1e-3)
    with torch.no_grad():  # an EMA of unit vectors is shorter than unit
        lin.parametrizations.weight[0]._u.mul_(0.5)
    assert _sigma(lin) == pytest.approx(2.0, rel=1e-2)
    refresh_spectral_norm(lin)
    assert not lin.training and _sigma(lin) == pytest.approx(1.0, abs=1e-3)


# -- (e) the image pool ------------------------------------------------------------------------------------
def _imgs(*tags: int) -> torch.Tensor:
    return torch.stack([torch.full((1, 2, 2), float(t)) for t in tags])


def _tags(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x[:, 0, 0, 0]]


def test_image_pool_fills_then_swaps_half_the_time_deterministically():
    assert torch.equal(ImagePool(0).query(_imgs(1, 2), torch.Generator()), _imgs(1, 2))  # size 0: identity
    g = torch.Generator().manual_seed(0)
    pool = ImagePool(4)
    assert _tags(pool.query(_imgs(0, 1, 2), g)) == [0, 1, 2] and len(pool) == 3  # filling: returned as given
    assert _tags(pool.query(_imgs(3, 4), g))[0] == 3 and len(pool) == 4  # 3 fills it; 4 may be swapped
    old = 0
    for t in range(5, 405):
        before = set(_tags(torch.stack(pool.images)))
        (got,) = _tags(pool.query(_imgs(t), g))
        after = _tags(torch.stack(pool.images))
        assert len(pool) == 4  # capacity holds
        if got != t:  # an older image came back and the new one took its place
            old += 1
            assert got in before and t in after and got not in after
        else:
            assert set(after) == before
    assert 160 <= old <= 240  # p = ½ (binomial n = 400: mean 200, sd 10)
    replay, rg = ImagePool(4), torch.Generator().manual_seed(0)
    replay.query(_imgs(0, 1, 2), rg)
    replay.query(_imgs(3, 4), rg)
    for t in range(5, 405):
        replay.query(_imgs(t), rg)
    assert torch.equal(torch.stack(replay.images), torch.stack(pool.images))  # same seed, same history
    copy = ImagePool(4)
    copy.load_state_dict(pool.state_dict())
    assert torch.equal(copy.query(_imgs(999), torch.Generator().manual_seed(5)),
                       pool.query(_imgs(999), torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="more than its size"):
        ImagePool(2).load_state_dict(pool.state_dict())


# -- (f) generator EMA --------------------------------------------------------------------------------------
def test_g_after_fit_is_the_ema_of_its_weights_after_each_g_update():
    G, D = _seeded(0, lambda: nn.Linear(2, 2)), _seeded(1, lambda: nn.Linear(2, 1))
    weights = []
    gan = GANStep(G, D, lambda ctx: (torch.randn(4, 2, generator=ctx.generator),
                                     torch.randn(4, 2, generator=ctx.generator)), n_critic=2)
    GANTrainer(gan, steps=4, generator=torch.Generator().manual_seed(0), ema_decay=0.5,
               g_optimizer=torch.optim.SGD(G.parameters(), lr=0.5),
               progress=lambda s, t, row: weights.append(G.weight.detach().clone())).fit()
    ema = weights[0]  # AveragedModel copies at its first update, then e ← ½e + ½w after each G update only
    for w in weights[1:]:
        ema = 0.5 * ema + 0.5 * w
    torch.testing.assert_close(G.weight.detach(), ema)
    assert not torch.allclose(G.weight.detach(), weights[-1])


# -- (g) resume ---------------------------------------------------------------------------------------------
def _resume_run(tmp_path, resume_from=None, ckpt=True):
    G = _seeded(0, lambda: _mlp(3, 2, 8))
    D = _seeded(1, lambda: apply_spectral_norm(_mlp(2, 1, 8, nn.LeakyReLU)))

    def sample(ctx):
        return _mixture(6, ctx.generator), torch.randn(6, 3, generator=ctx.generator)

    gan = GANStep(G, D, sample, loss="wgan-gp", n_critic=2, pool=4, r1_gamma=0.5, r1_every=2)
    tr = GANTrainer(gan, steps=6, generator=torch.Generator().manual_seed(7), ema_decay=0.9,
                    checkpoint_every=3 if ckpt else 0, checkpoint_dir=tmp_path / "ckpt" if ckpt else None)
    tr.fit(resume_from)
    return G, D, gan.pool, tr


def test_a_gan_resumed_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path):
    G1, D1, pool1, tr1 = _resume_run(tmp_path)
    ckpt = tmp_path / "ckpt" / "step-000003"
    assert (ckpt / POOL_FILE).is_file()
    G2, D2, pool2, tr2 = _resume_run(tmp_path / "b", resume_from=ckpt, ckpt=False)
    for a, b in [*zip(G1.state_dict().values(), G2.state_dict().values()),
                 *zip(D1.state_dict().values(), D2.state_dict().values())]:
        assert torch.equal(a, b)
    assert torch.equal(torch.stack(pool1.images), torch.stack(pool2.images))
    assert [r["d_loss"] for r in tr1.history] == [r["d_loss"] for r in tr2.history]
    # the pool is part of the state: resuming without it diverges
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / POOL_FILE).unlink()
    G3, *_ = _resume_run(tmp_path / "c", resume_from=broken, ckpt=False)
    assert not torch.equal(G1[0].weight, G3[0].weight)


def test_resume_refuses_another_gan_setup(tmp_path):
    _resume_run(tmp_path)
    G, D = _seeded(0, lambda: _mlp(3, 2, 8)), _seeded(1, lambda: apply_spectral_norm(_mlp(2, 1, 8, nn.LeakyReLU)))
    gan = GANStep(G, D, lambda ctx: (_mixture(6, ctx.generator), torch.randn(6, 3, generator=ctx.generator)),
                  loss="hinge", n_critic=2, pool=4)
    with pytest.raises(ValueError, match="another gan"):
        GANTrainer(gan, steps=6, generator=torch.Generator().manual_seed(7), ema_decay=0.9).fit(
            tmp_path / "ckpt" / "step-000003")
