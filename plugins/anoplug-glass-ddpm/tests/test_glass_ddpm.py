"""glass-ddpm: the kit (learned variant) and one mechanism test per paper step.

The kit runs with ``mask="nearest_normal"`` (the extension, an instance that provides masks);
the paper's mask-less output (``mask="none"``, the default, ``provides_mask = False``) is checked
by the tests below, the writer included.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn as nn
from anoplug_glass_ddpm.derived_mask import nearest_normal_mask
from anoplug_glass_ddpm.glass_ddpm import GlassDDPM, make_scheduler, to_model
from anoplug_glass_ddpm.memorisation import memorisation_check, nearest_distances
from anoplug_glass_ddpm.rebalance import SmallCNN, binary_metrics, recalibrate_batchnorm, training_set

from anoplug.data.toy import _to_batch, render_sample
from anoplug.testing import LearnedGeneratorConformance, make_toy_anomalies, make_toy_batch
from anoplug.types import GOOD, Batch

TINY = {"preset": "cpu", "resolution": 16, "sample_steps": 3, "bank_size": 4}


class TestGlassDDPMKit(LearnedGeneratorConformance):
    generator_name = "glass-ddpm"
    generator_class = GlassDDPM
    params = {**TINY, "mask": "nearest_normal"}
    bad_params = {"lr": -1.0, "mask": "box", "preset": "huge", "resolution": -1}
    entry_module = "anoplug_glass_ddpm.plugin"
    fit_steps = 2


def _fitted(normals: Batch | None = None, anomalies: Batch | None = None, steps: int = 2, **kw) -> GlassDDPM:
    g = GlassDDPM(**{**TINY, **kw})
    return g.fit(normals if normals is not None else make_toy_batch(4, 32, seed=10),
                 anomalies if anomalies is not None else make_toy_anomalies(4, 32), steps=steps)


def _bottles(split: str, indices: range, labels: list[str], size: int = 32) -> Batch:
    return _to_batch([render_sample("bottle", split, i, 0, size, label=lab) for i, lab in zip(indices, labels)])


# -- 1. data: the defective class only ------------------------------------------------------------------
def test_normals_never_enter_the_loss() -> None:
    """Catches training on normals (e.g. ``Batch.cat([normals, anomalies])``): other normals, same weights."""
    anomalies = make_toy_anomalies(4, 32)
    a = _fitted(make_toy_batch(4, 32, seed=1), anomalies, steps=3, bank_size=0)
    b = _fitted(make_toy_batch(6, 32, seed=2), anomalies, steps=3, bank_size=0)
    for n, t in a.unet.state_dict().items():
        assert torch.equal(t, b.unet.state_dict()[n]), f"{n}: the normals changed the trained weights"
    c = _fitted(make_toy_batch(4, 32, seed=1), make_toy_anomalies(4, 32, seed=9), steps=3, bank_size=0)
    assert any(not torch.equal(t, c.unet.state_dict()[n]) for n, t in a.unet.state_dict().items()), \
        "other anomalies, same weights: the anomalies are not what is learned"
    data = GlassDDPM(**TINY).build(make_toy_batch(4, 32, seed=1), anomalies, torch.Generator().manual_seed(0))
    small = torch.nn.functional.interpolate(anomalies.image, size=(16, 16), mode="bilinear", antialias=True,
                                            align_corners=False)
    assert torch.allclose(data["x0"], to_model(small)), "the training tensor is not the anomalies in [-1, 1]"


# -- 2-4. the paper preset: schedule, optimiser, epochs ------------------------------------------------
def test_paper_preset_has_the_papers_schedule_and_optimiser() -> None:
    """Catches a changed schedule (β 1e-4→0.02 linear over 1000), optimiser (AdamW 1e-4), size or epochs."""
    g = GlassDDPM()
    assert g.params.preset == "paper"
    arch = g.params.arch()
    assert (arch["resolution"], arch["epochs"], arch["sample_steps"]) == (128, 1300, 1000)
    cfg = make_scheduler(g.params).config
    assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type) == (1000, "linear", "epsilon")
    assert math.isclose(cfg.beta_start, 1e-4) and math.isclose(cfg.beta_end, 0.02)
    betas = make_scheduler(g.params).betas
    assert torch.allclose(betas, torch.linspace(1e-4, 0.02, 1000), atol=1e-7)
    g.unet = nn.Linear(2, 2)  # the optimiser does not depend on the network: spare building 114 M parameters
    opt = g.optimizers()["unet"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 1e-4
    assert g.planned_steps(None, {"x0": torch.zeros(63, 3, 1, 1)}) == 1300 * math.ceil(63 / 16)
    cpu = GlassDDPM(preset="cpu")
    assert make_scheduler(cpu.params).config == cfg, "the cpu preset must keep the paper's schedule"


def test_training_step_is_the_epsilon_prediction_loss() -> None:
    """Catches another objective (x0- or v-prediction) or another noising than q(x_t | x_0) of the schedule."""
    g = GlassDDPM(**TINY)
    data = g.build(None, make_toy_anomalies(4, 32), torch.Generator().manual_seed(0))
    loss = g.training_step(data, 0, torch.Generator().manual_seed(5))
    r = torch.Generator().manual_seed(5)  # the same draws, in the same order: indices, noise, timesteps
    idx = torch.randint(0, 4, (4,), generator=r)
    noise = torch.randn(4, 3, 16, 16, generator=r)
    t = torch.randint(0, 1000, (4,), generator=r)
    a = make_scheduler(g.params).alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * data["x0"][idx] + (1 - a).sqrt() * noise
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(g.unet(x_t, t).sample, noise)
    assert torch.allclose(loss.detach(), expected, atol=1e-5)


def test_paper_preset_samples_all_thousand_steps() -> None:
    """Catches a sampler that skips steps in the paper preset (it runs the full 1000-step chain)."""
    calls = []

    class Counting(nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor):  # noqa: ANN201
            calls.append(int(t.flatten()[0]))
            return type("O", (), {"sample": torch.zeros_like(x)})()

    g = GlassDDPM(resolution=8)
    g.unet, g._fitted = Counting(), True
    g.generate(make_toy_batch(1, 16), seed=0)
    assert len(calls) == 1000 and calls[0] == 999 and calls[-1] == 0


# -- 5. generation: unconditional, no mask -------------------------------------------------------------
def test_generation_is_unconditional_and_maskless() -> None:
    """Catches conditioning on the input image and a mask on the paper's output (default ``mask="none"``)."""
    g = _fitted()
    a = g.generate(make_toy_batch(3, 32, seed=1), seed=4)
    b = g.generate(make_toy_batch(3, 32, seed=2), seed=4)
    assert torch.equal(a.image, b.image), "the output depends on the input image: the DDPM is unconditional"
    assert a.label == ["defective"] * 3 and not bool(a.mask.any()), "a mask-less defect image is expected"
    assert all(m["sample"] == {"mask": "none"} and m["provides_mask"] is False for m in a.meta)
    assert not torch.equal(a.image, make_toy_batch(3, 32, seed=1).image)


def test_writer_records_no_mask_for_a_maskless_defect(tmp_path) -> None:
    """Catches an ignored ``provides_mask = False``: no ground-truth file, ``"mask": null`` — unless the extension is on."""
    import numpy as np
    from PIL import Image

    from anoplug.data.toy import ToyDataset
    from anoplug.data.writer import write_generated

    gen = _fitted()
    assert GlassDDPM.provides_mask is False and not gen.mask_provided()
    summary = write_generated(gen, ToyDataset("bottle", size=32, length=2), tmp_path / "none", n=2, progress=False)
    recs = [json.loads(line) for line in summary.manifest.read_text().splitlines() if line.strip()]
    assert [r["label"] for r in recs] == ["defective", "defective"]
    assert all(r["sample"] == {"mask": "none"} for r in recs), "the manifest must say the mask is absent by design"
    assert all(r["mask"] is None and r["provides_mask"] is False for r in recs)
    assert not (summary.manifest.parent / "ground_truth").exists(), "an empty mask file claims 'no defect pixels'"
    ext = gen.with_generation_params(mask="nearest_normal")
    assert ext.mask_provided()  # per instance: the derived mask is a real one
    summary = write_generated(ext, ToyDataset("bottle", size=32, length=2), tmp_path / "nn", n=2, progress=False)
    recs = [json.loads(line) for line in summary.manifest.read_text().splitlines() if line.strip()]
    root = summary.manifest.parent
    for r in recs:
        assert "provides_mask" not in r and np.asarray(Image.open(root / r["mask"])).any()


# -- 6. memorisation check --------------------------------------------------------------------------------
def test_memorisation_check_flags_a_copied_training_image() -> None:
    """Catches a check that does not compare against the training defects (or mis-scales its threshold)."""
    defects = ("crack", "contamination", "hole")
    train = _bottles("test", range(12), [defects[i % 3] for i in range(12)])
    fresh = _bottles("test", range(500, 503), list(defects))
    copy = train.image[3:4]
    noisy = (train.image[7:8] + 0.005 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    rep = memorisation_check(torch.cat([copy, noisy, fresh.image]), train.image)
    assert rep.flagged.tolist() == [True, True, False, False, False], rep.summary()
    assert rep.nearest_train_index[:2].tolist() == [3, 7]
    assert float(rep.generated_to_train[0]) < 1e-6
    d, i = nearest_distances(train.image, train.image, exclude_self=True)
    assert (i != torch.arange(12)).all() and (d > 0).all(), "leave-one-out must skip each image itself"


# -- extension: a mask against the nearest normal ------------------------------------------------------
def test_nearest_normal_mask_finds_a_real_defect() -> None:
    """Catches a derived mask that ignores where the image departs from its nearest normal."""
    bank = _bottles("train", range(16), [GOOD] * 16)
    defect = _bottles("test", range(12), ["crack", "contamination", "hole"] * 4)
    keep = [i for i, lab in enumerate(defect.label) if lab != "crack"]  # cracks are near-invisible at 32 px
    mask, idx = nearest_normal_mask(defect.image[keep], bank.image)
    truth = defect.mask[keep] > 0.5
    inter = (mask.bool() & truth).sum((1, 2, 3)).float()
    union = (mask.bool() | truth).sum((1, 2, 3)).float()
    assert float((inter / union).mean()) > 0.25, f"IoU with the true defects {inter / union}"
    assert (idx >= 0).all() and (idx < 16).all()


# -- 7. the paper's use: rebalancing ------------------------------------------------------------------------
def test_rebalancing_adds_the_generated_images_to_the_defective_class() -> None:
    """Catches a rebalancing that leaves the classifier's training set as it was (or labels them good)."""
    good, real, gen = torch.zeros(20, 3, 8, 8), torch.ones(6, 3, 8, 8), torch.full((5, 3, 8, 8), 0.5)
    x0, y0 = training_set(good, real)
    x1, y1 = training_set(good, real, gen)
    assert (len(x0), int(y0.sum())) == (26, 6) and (len(x1), int(y1.sum())) == (31, 11)
    assert torch.equal(x1[26:], gen) and (y1[26:] == 1).all()
    assert y1.mean() > y0.mean()


def test_binary_metrics_use_the_papers_threshold() -> None:
    """Catches another decision threshold than 0.4, or swapped precision/recall."""
    scores = torch.tensor([0.1, 0.45, 0.9, 0.35, 0.8, 0.2])
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    m = binary_metrics(scores, labels)
    close = {k: math.isclose(m[k], v, abs_tol=1e-6) for k, v in
             {"precision": 2 / 3, "recall": 2 / 3, "accuracy": 4 / 6, "auc": 8 / 9}.items()}
    assert all(close.values()), m


# -- the real-checkpoint path -----------------------------------------------------------------------------
def test_from_diffusers_loads_a_local_ddpm_pipeline_folder(tmp_path) -> None:
    """Catches a loader that ignores the folder's UNet or scheduler (it must sample with exactly those)."""
    from anoplug_glass_ddpm.glass_ddpm import PRESETS, build_unet
    from diffusers import DDPMScheduler

    unet = build_unet({**PRESETS["cpu"], "resolution": 16}, seed=3)
    unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=500, beta_start=2e-4, beta_end=0.03).save_pretrained(tmp_path / "scheduler")
    g = GlassDDPM.from_diffusers(tmp_path, preset="cpu", sample_steps=3)
    assert g.is_fitted and g.resolution == 16
    assert (g.params.train_timesteps, g.params.beta_start, g.params.beta_end) == (500, 2e-4, 0.03)
    for n, t in unet.state_dict().items():
        assert torch.equal(t, g.unet.state_dict()[n]), n
    out = g.generate(make_toy_batch(2, 32), seed=0)
    assert out.image.shape == (2, 3, 32, 32) and out.label == ["defective"] * 2


def test_batchnorm_statistics_are_recalibrated_on_the_training_images() -> None:
    """Catches evaluation with stale running statistics (what made the small classifier saturate)."""
    net = SmallCNN()
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    bn = net.features[1]
    bn.running_mean.fill_(5.0)
    recalibrate_batchnorm(net, images, batch_size=20)  # equal batches: the average of batch means is the mean
    with torch.no_grad():
        feats = net.features[0](images * 2 - 1)
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert not net.training
