"""PBAS: boundary-guided synthesis (contract + the paper's law) and its detector on a tiny configuration."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from anoplug_pbas.pbas import PBAS, build_centres, nearest_centres, patch_features, synthesize_twins, update_centres
from anoplug_pbas.visualize import feature_anomalies, plot_feature_anomalies

from anoplug.data.toy import ToyDataset
from anoplug.testing import FeatureGeneratorConformance

TINY = {"backbone": "tiny-random", "pretrained": False, "image_size": 64, "pretrain_dim": 32, "target_dim": 32,
        "dsc_hidden": 16, "batch_size": 4, "steps": 3}


class TestPBASConformance(FeatureGeneratorConformance):
    generator_name = "pbas"
    params = TINY
    bad_params = {"k": 0.0, "centre_momentum": 1.0, "backbone": "vgg", "patch_size": 4, "image_size": 20}
    entry_module = "anoplug_pbas.plugin"
    feature_shape = (4, 16, 8, 8)

    stochastic = False  # PBAS samples nothing: the twins are fixed by the batch, whatever the seed


def test_twins_differ_from_features_and_have_no_mask() -> None:
    g, f = TestPBASConformance().make_generator(), TestPBASConformance().make_features()
    twins, mask = g.generate_features(f, seed=0)
    assert mask is None and not torch.equal(twins, f), "twins equal the features"


def test_defaults_are_the_papers() -> None:
    p = PBAS().params
    assert (p.k, p.centre_momentum, p.patch_size, p.pretrain_dim, p.target_dim) == (0.25, 0.9, 3, 1536, 1536)
    assert (p.dsc_hidden, p.lr, p.batch_size, p.image_size) == (1024, 1e-4, 8, 288)
    assert PBAS.category == "feature"


def test_centre_ema_matches_the_sequential_reference() -> None:
    g = torch.Generator().manual_seed(0)
    centres, rows = torch.randn(6, 5, generator=g), torch.randn(50, 5, generator=g)
    ref = centres.clone()
    for j, i in enumerate(nearest_centres(rows, centres)):  # the reference's loop, matched once per batch
        ref[i] = ref[i] * 0.9 + rows[j] * 0.1
    assert torch.allclose(update_centres(centres, rows, 0.9), ref, atol=1e-6)
    first = torch.randn(3, 6, 5, generator=g)
    assert torch.allclose(build_centres([first]), first.mean(0))


def test_twins_are_pushed_outward_by_k_times_the_mean_radius() -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 8, generator=g)
    feats = centres[torch.arange(40) % 4] + 0.3 * torch.randn(40, 8, generator=g)
    twins, radius, idx = synthesize_twins(feats, centres, k=0.25)
    direction = feats - centres[idx]
    assert torch.allclose(radius, direction.norm(dim=1).mean())
    push = twins - feats
    assert torch.allclose(push.norm(dim=1), torch.full((40,), 0.25 * float(radius)), atol=1e-5)
    assert bool((F.cosine_similarity(push, direction, dim=1) > 0.9999).all()), "push is not along centre → feature"
    assert bool(((twins - centres[idx]).norm(dim=1) > direction.norm(dim=1)).all())
    feats.requires_grad_(True)
    twins, radius, _ = synthesize_twins(feats, centres)
    twins.sum().backward()
    assert torch.allclose(feats.grad, torch.ones_like(feats)), "the push must be detached"


def test_patch_features_reduce_to_the_features_for_a_1x1_patch() -> None:
    f = torch.randn(2, 6, 4, 5, generator=torch.Generator().manual_seed(2))
    rows, (h, w) = patch_features([f], patch_size=1, pretrain_dim=6, target_dim=6)
    assert (h, w) == (4, 5) and torch.allclose(rows, f.flatten(2).transpose(1, 2))
    deep = torch.randn(2, 10, 2, 3)
    rows, (h, w) = patch_features([f, deep], patch_size=3, pretrain_dim=16, target_dim=12)
    assert rows.shape == (2, 20, 12) and (h, w) == (4, 5)


def test_generate_features_uses_fitted_centres_and_checks_dims() -> None:
    gen = PBAS(**TINY)
    f = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(3))
    gen.centres = torch.zeros(16, 32)
    gen.centres[:, 0] = 1.0
    twins, mask = gen.generate_features(f)
    assert mask is None and twins.shape == f.shape
    with pytest.raises(ValueError, match="channels"):
        gen.generate_features(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match="seeds"):
        gen.generate_features(f, seeds=[1])


@pytest.fixture(scope="module")
def toy() -> tuple:
    return ToyDataset("metal", "train", 64).batch(range(8)), ToyDataset("metal", "test", 64).batch(range(10))


def test_detector_trains_deterministically_and_round_trips(toy, tmp_path) -> None:
    train, test = toy
    seen = []
    a = PBAS(**TINY).fit(train, progress=lambda i, n, info: seen.append((i, n, info)))
    assert a.is_fitted and [h["loss"] for h in a.history] == [s[2]["loss"] for s in seen]
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(math.isfinite(s[2]["loss"]) and s[2]["radius"] > 0 for s in seen)
    assert a.centres is not None and a.centres.shape == (8 * 8, 32)  # one centre per layer2 position (64 / 8)
    b = PBAS(**TINY).fit(train)
    assert torch.equal(a.centres, b.centres) and torch.equal(a.projection.weight, b.projection.weight)
    maps, scores = a.predict(test)
    assert maps.shape == (10, 1, 64, 64) and scores.shape == (10,)
    a.save(tmp_path / "pbas")
    again = PBAS.load(tmp_path / "pbas")
    assert again.is_fitted and torch.equal(again.centres, a.centres)
    maps2, scores2 = again.predict(test)
    assert torch.equal(maps, maps2) and torch.equal(scores, scores2), "save → load changed the predictions"
    metrics = a.evaluate(test)
    for key in ("image_auroc", "pixel_auroc", "pixel_ap", "image_auroc_head"):
        assert 0.0 <= metrics[key] <= 1.0
    with pytest.raises(ValueError, match="unsupervised"):
        PBAS(**TINY).fit(train, test)


def _weights(gen: PBAS) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t for k, m in gen.modules().items() for n, t in m.state_dict().items()} | \
        {"centres": gen.centres}


def test_resuming_a_checkpoint_gives_the_uninterrupted_weights(toy, tmp_path) -> None:
    train, _ = toy
    full = PBAS(**TINY).fit(train, steps=6)
    ckpt = PBAS(**TINY).fit(train, steps=6, checkpoint_every=2, checkpoint_dir=tmp_path)
    assert sorted(d.name for d in tmp_path.iterdir()) == ["step-000002", "step-000004"]
    for name in ("config.json", "weights.safetensors", "training_state.json", "training_state.safetensors"):
        assert (tmp_path / "step-000004" / name).is_file(), name
    resumed = PBAS(**TINY).fit(train, steps=6, resume_from=tmp_path / "step-000004")
    want = _weights(full)
    for got in (_weights(ckpt), _weights(resumed)):
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), \
            [k for k in want if not torch.equal(want[k], got[k])]
    assert resumed.history == full.history and len(full.history) == 6
    mid = PBAS.load(tmp_path / "step-000002")  # a checkpoint is a loadable (partly trained) model
    assert mid.is_fitted and mid.centres is not None and not torch.equal(mid.projection.weight, full.projection.weight)


def test_training_compacts_features_toward_the_centres(toy) -> None:
    train, _ = toy
    gen = PBAS(**{**TINY, "lr": 1e-3})

    def mean_radius() -> float:
        with torch.no_grad():
            feats = gen.projection(gen.features(train.image)[0].reshape(-1, gen.params.target_dim))
            return float(synthesize_twins(feats, gen.centres)[1])

    gen.fit(train, steps=0)  # centres only (built with the untrained projection, as in fit(steps=n))
    before = mean_radius()
    gen.fit(train, steps=40)
    after = mean_radius()
    assert after < before, f"mean radius did not shrink ({before:.3f} → {after:.3f}): the boundary is not progressive"


def test_feature_view(toy) -> None:
    train, _ = toy
    gen = PBAS(**TINY).fit(train, steps=1)
    views = feature_anomalies(gen, train[[0, 1]])
    assert views["image"].shape == (2, 3, 64, 64)
    for key in ("push", "map_before", "map_after"):
        assert views[key].shape == (2, 1, 64, 64), key
    assert float(views["push"].min()) > 0, "every position gets a twin"
    assert views["points_normal"].shape[1] == 2 and views["points_centre"].shape == (64, 2)
    fig = plot_feature_anomalies(views)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_default_training_length_follows_the_papers_epochs():
    """Review fix: 640 epochs, not a fixed 5 000 steps (which matched no class: 5 k–31 k on MVTec AD)."""
    from anoplug_pbas.pbas import PBAS, PBASParams

    assert PBASParams().epochs == 640 and PBASParams().steps == 0
    g = PBAS(**{**TINY, "steps": 0, "epochs": 2})
    assert g.planned_steps(None, torch.zeros(6, 1)) == 2 * 2  # 6 images at batch 4: 2 steps per epoch
    assert PBAS().planned_steps(None, torch.zeros(391, 1)) == 640 * 49  # MVTec's largest class at batch 8
    assert g.planned_steps(7, torch.zeros(6, 1)) == 7
