"""ASBench's four detection pipelines: one test per mechanism (each fails when the mechanism is removed),
one end-to-end test per pipeline, and the ``downstream-utility`` wiring.

All at 32², 1 thread. The end-to-end trainings (a few dozen steps each) are shared, module-scoped,
with the mechanism tests that need a trained or an untrained detector.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anoplug_metrics.detector import focal_loss, predict_maps, train_detector
from anoplug_metrics.pipelines import (
    PIPELINES,
    SyntheticSet,
    match_sources,
    pipeline_config_class,
    resolve_config,
    train_pipeline,
)
from anoplug_metrics.pipelines._features import build_pyramid
from anoplug_metrics.pipelines.destseg import DestsegDetector, cosine_distance_loss
from anoplug_metrics.pipelines.draem import draem_ssim
from anoplug_metrics.pipelines.memseg import memseg_focal_loss, warmup_cosine
from anoplug_metrics.utility import DownstreamUtility
from torchvision.ops import sigmoid_focal_loss

from anoplug.metrics import auroc
from anoplug.params import ParamError
from anoplug.types import Batch

S = 32
#: the end-to-end settings (CPU scale otherwise); chosen so that seed 0 clears untrained + 0.1 with margin
E2E = {"ad-unet": {"steps": 30, "batch_size": 8}, "draem": {"steps": 60, "batch_size": 4},
       "destseg": {"steps": 60, "batch_size": 4}, "memseg": {"steps": 20, "batch_size": 4}}


@pytest.fixture(scope="module")
def toy() -> dict:
    """Toy metal normals (16 to train on, 8 held out) and opaque DRAEM anomalies on each group."""
    import anoplug
    from anoplug.data.toy import ToyDataset
    from anoplug.driver import generate_batch

    every = ToyDataset("metal", split="train", size=S, length=24).batch(range(24))
    train = Batch(image=every.image[:16], mask=every.mask[:16], label=every.label[:16], meta=every.meta[:16])
    other = Batch(image=every.image[16:], mask=every.mask[16:], label=every.label[16:], meta=every.meta[16:])
    make = lambda: anoplug.get_generator("draem", probability=1.0, beta_max=0.0)  # noqa: E731
    gen = generate_batch(make(), train, range(32), seed=0)
    held = generate_batch(make(), other, range(16), seed=1)
    clean, how = match_sources(gen.image, gen.mask, train.image, gen.meta, train.meta)
    assert how == "meta"
    return {"normals": train, "other": other, "generated": gen, "held": held,
            "synthetic": SyntheticSet(gen.image, gen.mask, clean)}


_RUNS: dict[str, dict] = {}


def _e2e(name: str, toy: dict) -> dict:
    """Untrained (0 steps) and trained detectors of pipeline ``name``, seed 0, trained once per module."""
    if name not in _RUNS:
        state = torch.get_rng_state()
        kw = {"seed": 0, "size": S, "scale": "cpu", **E2E[name]}
        untrained = train_pipeline(name, toy["normals"].image, toy["synthetic"], **{**kw, "steps": 0})
        trained = train_pipeline(name, toy["normals"].image, toy["synthetic"], **kw)
        _RUNS[name] = {"untrained": untrained, "trained": trained,
                       "rng_untouched": torch.equal(torch.get_rng_state(), state)}
    return _RUNS[name]


def _pixel_auroc(det, batch: Batch) -> float:
    maps, scores = det.predict(batch.image)
    assert maps.shape == batch.mask.shape and scores.shape == (len(batch),)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    return auroc(maps.numpy(), batch.mask.numpy())


# -- the interface -------------------------------------------------------------------------------------------------
def test_registry_and_official_defaults() -> None:
    assert set(PIPELINES) == {"ad-unet", "draem", "destseg", "memseg"}
    ad, dr, ds, ms = (resolve_config(n) for n in ("ad-unet", "draem", "destseg", "memseg"))
    assert (ad.steps, ad.batch_size, ad.lr, ad.base_width, ad.focal_gamma, ad.size) == (12_500, 8, 1e-4, 64, 2.0, 256)
    assert (dr.epochs, dr.batch_size, dr.lr, dr.base_width, dr.rec_width, dr.focal_gamma) == (700, 8, 1e-4, 64, 128, 2.0)
    assert dr.total_steps(209) == 700 * 27  # 700 epochs of ceil(209 / 8) batches (MVTec bottle's 209 normals)
    assert (ds.steps, ds.de_st_steps, ds.batch_size, ds.lr_de_st, ds.lr_res, ds.lr_seghead, ds.focal_gamma,
            ds.seg_width) == (5000, 1000, 32, 0.4, 0.1, 0.01, 4.0, 256)
    assert (ms.steps, ms.batch_size, ms.lr, ms.min_lr, ms.warmup_ratio, ms.weight_decay, ms.l1_weight, ms.focal_weight,
            ms.focal_gamma, ms.n_memory) == (5000, 8, 3e-3, 1e-4, 0.1, 5e-4, 0.6, 0.4, 4.0, 30)
    cpu = resolve_config("draem", "cpu", lr=None, steps=7)  # None keeps the scale's value
    assert (cpu.steps, cpu.base_width, cpu.lr) == (7, 8, 1e-3)
    with pytest.raises(ValueError, match="no setting base_width"):
        resolve_config("destseg", base_width=8)
    assert pipeline_config_class("memseg") is type(ms)


def test_ad_unet_is_the_former_detector_bit_for_bit(toy: dict) -> None:
    n, syn = toy["normals"].image, toy["synthetic"]
    det = train_pipeline("ad-unet", n, syn, steps=3, batch_size=2, base_width=2, lr=1e-3, size=S, seed=5)
    model, losses = train_detector(n, syn.images, syn.masks, steps=3, batch_size=2, base_width=2, lr=1e-3, seed=5)
    maps, _ = det.predict(toy["held"].image)
    assert torch.equal(maps, predict_maps(model, toy["held"].image))
    assert [r["loss"] for r in det.history] == losses


@pytest.mark.parametrize("name", list(E2E))
def test_a_few_dozen_steps_separate_held_out_defects(name: str, toy: dict) -> None:
    """On held-out normals with held-out DRAEM anomalies, training beats the untrained network (pixel AUROC)."""
    run = _e2e(name, toy)
    before, after = _pixel_auroc(run["untrained"], toy["held"]), _pixel_auroc(run["trained"], toy["held"])
    assert after > before + 0.1, (name, before, after)
    assert run["rng_untouched"]  # every draw came from the seed's generator
    assert len(run["trained"].history) == E2E[name]["steps"]


@pytest.mark.parametrize("name", ["draem", "destseg", "memseg"])
def test_same_seed_same_detector(name: str, toy: dict) -> None:
    kw = {"steps": 2, "batch_size": 2, "size": S, "scale": "cpu", "seed": 3}
    a, b = (train_pipeline(name, toy["normals"].image, toy["synthetic"], **kw) for _ in range(2))
    assert torch.equal(a.predict(toy["held"].image)[0], b.predict(toy["held"].image)[0])


def test_focal_losses_with_gamma_zero_are_bce() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.7).float()
    p1 = logits.softmax(1)[:, 1:]
    bce = F.binary_cross_entropy(p1, target)
    # DRAEM / AD U-Net (softmax, label smoothing 1e-5) and MemSeg (softmax, its smoothed one-hot): BCE up to the smoothing.
    assert float(focal_loss(logits, target, gamma=0.0)) == pytest.approx(float(bce), abs=1e-4)
    assert float(memseg_focal_loss(logits.softmax(1), target, gamma=0.0)) == pytest.approx(float(bce), abs=1e-4)
    # DeSTSeg (sigmoid, no alpha): exactly BCE.
    one = logits[:, 1:]
    assert torch.allclose(sigmoid_focal_loss(one, target, alpha=-1, gamma=0.0, reduction="mean"),
                          F.binary_cross_entropy_with_logits(one, target))
    # gamma > 0 down-weights the easy pixels: the loss falls below BCE.
    assert float(focal_loss(logits, target, gamma=2.0)) < float(bce)
    assert float(memseg_focal_loss(logits.softmax(1), target, gamma=4.0)) < float(bce)


def test_match_sources_by_meta_then_by_the_unmasked_pixels(toy: dict) -> None:
    gen, normals = toy["generated"], toy["normals"]
    expect = normals.image[torch.arange(len(gen)) % len(normals)]
    by_meta, how = match_sources(gen.image, gen.mask, normals.image, gen.meta, normals.meta)
    assert how == "meta" and torch.equal(by_meta, expect)
    nearest, how = match_sources(gen.image, gen.mask, normals.image)  # no metadata: the rest of the image decides
    assert how == "nearest" and torch.equal(nearest, expect)


# -- DRAEM -------------------------------------------------------------------------------------------------------
def test_draem_discriminator_segments_reconstruction_and_image(toy: dict) -> None:
    det = _e2e("draem", toy)["trained"]
    assert det.seg.enc[0][0].in_channels == 6
    x = toy["held"].image[:4]
    seen = {}
    hook = det.seg.register_forward_pre_hook(lambda mod, inp: seen.update(x=inp[0].detach().clone()))
    det.eval()
    with torch.no_grad():
        det.anomaly_map(x)
        rec = det.rec(x)
    hook.remove()
    assert torch.equal(seen["x"], torch.cat([rec, x], 1))  # (reconstruction, image), in DRAEM's order
    blind = copy.deepcopy(det)  # a reconstruction that says nothing: the map must change
    with torch.no_grad():
        blind.rec.out.weight.zero_()
        blind.rec.out.bias.zero_()
    assert not torch.allclose(blind.predict(x)[0], det.predict(x)[0], atol=1e-3)


def test_draem_reconstruction_is_trained_towards_the_clean_image(toy: dict) -> None:
    """Same anomalies, clean targets all black vs all white: the reconstruction follows the target, not the input."""
    syn = toy["synthetic"]
    out = {}
    for level in (0.0, 1.0):
        target = SyntheticSet(syn.images, syn.masks, torch.full_like(syn.images, level))
        det = train_pipeline("draem", toy["normals"].image, target, steps=10, batch_size=2, size=S, scale="cpu",
                             anomaly_prob=1.0, base_width=2, rec_width=4, lr=1e-2, seed=0)
        det.eval()
        with torch.no_grad():
            out[level] = float(det.rec(syn.images[:8]).mean())
        assert {"l2", "ssim", "focal"} <= set(det.history[-1])
    assert out[1.0] > out[0.0] + 0.1, out


def test_draem_ssim_is_skimage_ssim_inside_and_reads_its_range_off_the_reconstruction() -> None:
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 40, 40, generator=g)
    b = (a + 0.1 * torch.randn(1, 3, 40, 40, generator=g)).clamp(0, 1)
    _, ours = draem_ssim(a, b)
    _, ref = structural_similarity(a[0].permute(1, 2, 0).double().numpy(), b[0].permute(1, 2, 0).double().numpy(),
                                   gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
                                   channel_axis=2, full=True)
    inner = ours[0].permute(1, 2, 0).double().numpy()[5:-5, 5:-5]
    assert np.allclose(inner, ref[5:-5, 5:-5], atol=1e-5)  # the borders differ on purpose: DRAEM pads with zeros
    assert float(draem_ssim(a, a)[0]) == pytest.approx(1.0, abs=1e-6)
    # The range comes from the first argument: at 0-255 scale the same images are (almost) identical at L = 255.
    assert float(draem_ssim(a * 255, b * 255)[0]) == pytest.approx(float(draem_ssim(a, b)[0]), abs=1e-4)


def test_draem_schedule_drops_the_learning_rate_at_80_and_90_percent(toy: dict) -> None:
    lrs = [r["lr"] for r in _e2e("draem", toy)["trained"].history]
    assert lrs[:48] == [pytest.approx(1e-3)] * 48
    assert lrs[48:54] == [pytest.approx(2e-4)] * 6 and lrs[54:] == [pytest.approx(4e-5)] * 6


# -- DeSTSeg -----------------------------------------------------------------------------------------------------
def _cosine_distance(det: DestsegDetector, x: torch.Tensor) -> float:
    det.eval()
    with torch.no_grad():
        return float(cosine_distance_loss(det.student_features(x), det.teacher_features(x))) / len(x)


def test_destseg_student_learns_to_match_the_teacher_on_clean_images(toy: dict) -> None:
    """20 steps of stage 1 on normals: the student's features of unseen normals move towards the teacher's."""
    kw = {"batch_size": 4, "size": S, "scale": "cpu", "de_st_fraction": 1.0, "seg_width": 8}
    untrained = train_pipeline("destseg", toy["normals"].image, None, steps=0, **kw)
    trained = train_pipeline("destseg", toy["normals"].image, None, steps=20, **kw)
    clean = toy["other"].image  # normals the student never saw
    before, after = _cosine_distance(untrained, clean), _cosine_distance(trained, clean)
    assert after < 0.8 * before, (before, after)
    assert [r["stage"] for r in trained.history] == [1] * 20


def test_destseg_stage_one_teaches_the_student_on_augmented_images_from_the_clean_teacher(
        toy: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[float]] = {"teacher": [], "student": []}
    teacher, student = DestsegDetector.teacher_features, DestsegDetector.student_features
    monkeypatch.setattr(DestsegDetector, "teacher_features",
                        lambda self, x: seen["teacher"].append(float(x.mean())) or teacher(self, x))
    monkeypatch.setattr(DestsegDetector, "student_features",
                        lambda self, x: seen["student"].append(float(x.mean())) or student(self, x))
    syn = SyntheticSet(torch.ones(4, 3, S, S), torch.ones(4, 1, S, S), torch.zeros(4, 3, S, S))
    train_pipeline("destseg", toy["normals"].image, syn, steps=1, batch_size=2, size=S, scale="cpu", anomaly_prob=1.0,
                   de_st_fraction=1.0, seg_width=8)
    assert seen == {"teacher": [0.0], "student": [1.0]}  # teacher(clean), student(augmented)


def test_destseg_trains_the_student_then_only_the_segmentation_network(toy: dict) -> None:
    snaps = []

    def snap(step, det) -> None:
        snaps.append((step, copy.deepcopy(det.student.state_dict()), copy.deepcopy(det.seg.state_dict())))

    train_pipeline("destseg", toy["normals"].image, toy["synthetic"], steps=4, batch_size=2, size=S, scale="cpu",
                   de_st_fraction=0.5, seg_width=8, callback=snap, eval_every=2)
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731  (buffers included)
    fresh = train_pipeline("destseg", toy["normals"].image, toy["synthetic"], steps=0, size=S, scale="cpu",
                           seg_width=8)
    (s2, st2, sg2), (s4, st4, sg4) = snaps
    assert (s2, s4) == (2, 4)
    assert not same(fresh.student.state_dict(), st2) and same(fresh.seg.state_dict(), sg2)  # stage 1: student only
    assert same(st2, st4) and not same(sg2, sg4)  # stage 2: segmentation only (the student stays in eval mode)


def test_destseg_segments_minus_teacher_times_student() -> None:
    det = train_pipeline("destseg", torch.rand(4, 3, S, S, generator=torch.Generator().manual_seed(0)), None, steps=0,
                         size=S, scale="cpu", seg_width=8)
    t = det.teacher_features(torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(1)))
    x = det.seg_input(t, t)  # a student equal to the teacher: -<t^, t^> = -1 at every position of every level
    assert x.shape[1] == sum(f.shape[1] for f in t) == det.seg.res[0].conv1.in_channels
    bounds = np.cumsum([0] + [f.shape[1] for f in t])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        assert torch.allclose(x[:, lo:hi].sum(1), torch.full_like(x[:, 0], -1.0), atol=1e-4)


# -- MemSeg ------------------------------------------------------------------------------------------------------
def test_memseg_memory_difference_is_zero_for_a_memory_image(toy: dict) -> None:
    det = _e2e("memseg", toy)["untrained"]
    net, idx = det.net, det.config["memory_index"]
    assert len(idx) == 16  # min(30, number of normals), drawn without replacement
    net.eval()
    with torch.no_grad():
        for k in range(3):  # memory image k, alone (as the bank was filled): its own features, difference 0
            feats = net.encoder(toy["normals"].image[idx[k]][None], upto=3)[1:4]
            assert net.memory.nearest(feats).tolist() == [k]
            concat = net.memory.select(feats)
            for f, c in zip(concat, net.encoder.channels[1:4]):
                assert f.shape[1] == 2 * c and torch.equal(f[:, c:], torch.zeros_like(f[:, c:]))
            fused = net.msff(concat)  # no difference, so the spatial attention zeroes every fused level
            assert all(float(t.abs().max()) == 0.0 for t in fused)
        anomalous = net.memory.select(net.encoder(toy["held"].image[:3], upto=3)[1:4])
        assert all(float(f[:, c:].mean()) > 0 for f, c in zip(anomalous, net.encoder.channels[1:4]))
        assert all(float(t.abs().max()) > 0 for t in net.msff(anomalous))


def test_memseg_trains_the_stem_and_last_level_and_freezes_levels_1_to_3(toy: dict) -> None:
    trained = _e2e("memseg", toy)["trained"].net.encoder
    fresh = build_pyramid(trained.backbone, pretrained=True)
    for i, (a, b) in enumerate(zip(trained.levels, fresh.levels)):
        params_equal = all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        assert params_equal == (i in (1, 2, 3)), i
        assert all(p.requires_grad == (i in (0, 4)) for p in a.parameters())


def test_memseg_warmup_cosine_schedule(toy: dict) -> None:
    lrs = [r["lr"] for r in _e2e("memseg", toy)["trained"].history]  # 20 steps: 2 of warm-up
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] == pytest.approx(1e-4 + 0.5 * (3e-3 - 1e-4))
    assert lrs[2] == pytest.approx(3e-3) and all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    f = warmup_cosine(100, 3e-3, 1e-4, 0.1)
    assert 3e-3 * f(55) == pytest.approx(1e-4 + (3e-3 - 1e-4) / 2)  # half-way through the cosine


# -- downstream-utility ---------------------------------------------------------------------------------------------
def test_utility_runs_a_chosen_pipeline_and_says_which(toy: dict) -> None:
    real = Batch(image=torch.cat([toy["other"].image[:4], toy["held"].image[:4]]),
                 mask=torch.cat([torch.zeros(4, 1, S, S), toy["held"].mask[:4]]),
                 label=["good"] * 4 + ["draem"] * 4)
    kw = {"steps": 2, "batch_size": 2, "size": S, "repeats": 1, "baseline": False, "pipeline_scale": "cpu"}
    rep = DownstreamUtility(pipeline="draem", **kw).evaluate(toy["generated"], normals=toy["normals"], real=real)
    assert rep.details["pipeline"] == "draem" and rep.details["sources"] == "meta"
    assert rep.details["pipeline_config"]["rec_width"] == 16 and math.isfinite(rep["pixel_auroc"])
    assert set(rep.details["repeats"][0]["pipeline_image_score"]) == {"image_auroc", "image_ap"}
    given = DownstreamUtility(pipeline="draem", **kw).evaluate(toy["generated"], normals=toy["normals"], real=real,
                                                               sources=Batch(image=toy["synthetic"].clean))
    assert given.details["sources"] == "given" and given["pixel_auroc"] == rep["pixel_auroc"]
    memseg = DownstreamUtility(pipeline="memseg", pipeline_params="n_memory=4", **kw).evaluate(
        toy["generated"], normals=toy["normals"], real=real)
    assert memseg.details["pipeline_config"]["n_memory"] == 4 and memseg.details["sources"] == "not needed"
    default = DownstreamUtility(steps=2, batch_size=2, base_width=2, size=S, repeats=1, baseline=False)
    assert default.params.pipeline == "ad-unet"
    assert default.evaluate(toy["generated"], normals=toy["normals"], real=real).details["detector"].startswith("DRAEM")
    with pytest.raises(ParamError, match="no setting base_width"):
        DownstreamUtility(pipeline="destseg", base_width=8)
