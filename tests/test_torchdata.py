"""The on-the-fly dataset: sample i depends on (seed, epoch, i) alone and is the driver's sample i."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from anoplug.data import open_dataset
from anoplug.driver import generate_batch
from anoplug.torchdata import SyntheticAnomalyDataset, is_synthetic, run_seed

SIZE = 64


@pytest.fixture(scope="module")
def source():
    return open_dataset("toy:metal", size=SIZE)


def _rows(loader):
    """Every (image, mask, label) of a loader, in order, one row per sample."""
    out = []
    for image, mask, label in loader:
        out += list(zip(image, mask, label.tolist(), strict=True))
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
                                    for x, y in zip(a, b, strict=True))


def test_epoch0_is_the_drivers_sample(source):
    """Synthetic sample i is generate_batch's sample i at the same seed; a normal one is the source row."""
    ds = SyntheticAnomalyDataset(source, "draem", p=0.5, seed=7)
    synth = [i for i in range(12) if ds.is_synthetic(i)]
    plain = [i for i in range(12) if not ds.is_synthetic(i)]
    assert synth and plain
    ref = generate_batch(ds.generator, source, synth, seed=7)
    for k, i in enumerate(synth):
        image, mask, label = ds[i]
        assert torch.equal(image, ref.image[k]) and torch.equal(mask, ref.mask[k]) and label == 1
    for i in plain:
        image, mask, label = ds[i]
        assert torch.equal(image, source.batch([i]).image[0]) and not mask.any() and label == 0


def test_same_bytes_for_any_worker_count_and_batch_size(source):
    """No global RNG, no RNG state shared across workers: 0, 1, 2 workers and any batch size agree."""
    ds = SyntheticAnomalyDataset(source, "draem", p=0.5, seed=1, length=20)
    ref = _rows(ds.loader(batch_size=4, num_workers=0))
    assert _same(ref, _rows(ds.loader(batch_size=4, num_workers=1)))
    assert _same(ref, _rows(ds.loader(batch_size=4, num_workers=2)))
    assert _same(ref, _rows(ds.loader(batch_size=7, num_workers=2)))
    assert _same(ref, _rows(ds.loader(batch_size=1, num_workers=0)))
    # a global draw between loaders changes nothing
    torch.manual_seed(12345)
    np.random.seed(6)
    assert _same(ref, _rows(ds.loader(batch_size=3, num_workers=2, batched=True)))


def test_epochs_differ_and_come_back(source):
    ds = SyntheticAnomalyDataset(source, "cutpaste", p=0.5, seed=0, length=16)
    e0 = [ds[i] for i in range(16)]
    ds.set_epoch(1)
    assert ds.run_seed() != ds.run_seed(0) == 0
    e1 = [ds[i] for i in range(16)]
    assert [ds.is_synthetic(i, 0) for i in range(16)] != [ds.is_synthetic(i, 1) for i in range(16)]
    both = [i for i in range(16) if ds.is_synthetic(i, 0) and ds.is_synthetic(i, 1)]
    assert both and all(not torch.equal(e0[i][0], e1[i][0]) for i in both)  # new anomalies, not the same ones
    ds.set_epoch(0)
    assert _same(e0, [ds[i] for i in range(16)])


def test_p0_is_the_source_unchanged(source):
    ds = SyntheticAnomalyDataset(source, "draem", p=0.0, length=10)
    for i in range(10):
        image, mask, label = ds[i]
        assert torch.equal(image, source.batch([i]).image[0]) and mask.shape == (1, SIZE, SIZE)
        assert not mask.any() and label == 0


@pytest.mark.parametrize("name", ["draem", "cutpaste"])
def test_p1_is_all_synthetic(source, name):
    """By name the method's own coin (DRAEM's probability=0.5) is set to 1: p alone decides."""
    ds = SyntheticAnomalyDataset(source, name, p=1.0, length=8)
    for image, mask, label in _rows(ds.loader(batch_size=8, batched=True)):
        assert label == 1 and mask.sum() > 0
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1


def test_fraction_synthetic_is_p():
    n, p = 4000, 0.3
    k = sum(is_synthetic(p, 5, i) for i in range(n))
    assert abs(k - n * p) < 4.5 * math.sqrt(n * p * (1 - p))
    # the decision is not the generator's own stream: epoch 1 draws anew
    k1 = sum(is_synthetic(p, 5, i) == is_synthetic(p, run_seed(5, 1), i) for i in range(n))
    assert k1 < n * 0.75


def test_batched_collate_equals_per_sample_in_one_call(source, monkeypatch):
    ds = SyntheticAnomalyDataset(source, "draem", p=0.6, seed=2, length=12, output="dict")
    per = [ds[i] for i in range(12)]
    calls = []
    real = ds.generator.generate
    monkeypatch.setattr(ds.generator, "generate", lambda b, **kw: (calls.append(len(b)), real(b, **kw))[1])
    batches = list(ds.loader(batch_size=6, batched=True))
    assert len(calls) == 2 and sum(calls) == sum(s["label"] for s in per)  # one generator call per batch
    got = [{k: (v[j] if k != "label" else int(v[j])) for k, v in b.items()} for b in batches for j in range(6)]
    for a, b in zip(per, got, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["label"] == b["label"] and a["anomaly_type"] == b["anomaly_type"]
        assert a["meta"]["sample_seed"] == b["meta"]["sample_seed"]


def test_nsa_gets_its_paired_source(source):
    """NSA borrows a patch from image (i+1) % N: the dataset's sample is the driver's, paired source included."""
    ds = SyntheticAnomalyDataset(source, "nsa", p=1.0, seed=4, length=6)
    ref = generate_batch(ds.generator, source, range(6), seed=4)
    rows = _rows(ds.loader(batch_size=3, num_workers=2))
    assert all(torch.equal(r[0], ref.image[k]) for k, r in enumerate(rows))
    assert any(r[2] == 1 for r in rows)


def test_indexable_source():
    images = [np.full((SIZE, SIZE, 3), 40 * k, np.uint8) for k in range(4)]
    ds = SyntheticAnomalyDataset(images, "cutpaste", p=0.0)
    assert len(ds) == 4 and torch.equal(ds[2][0], torch.full((3, SIZE, SIZE), 80 / 255))
    t = torch.rand(3, 3, SIZE, SIZE)
    ds = SyntheticAnomalyDataset(list(t), "cutpaste", p=1.0)
    assert ds[1][2] == 1 and not torch.equal(ds[1][0], t[1])


def test_spawned_workers(source):
    ds = SyntheticAnomalyDataset(source, "cutpaste", p=0.5, seed=9, length=4)
    ref = _rows(ds.loader(batch_size=2))
    assert _same(ref, _rows(ds.loader(batch_size=2, num_workers=1, multiprocessing_context="spawn")))


def test_training_through_trainer_over_two_workers(source):
    """A tiny segmentation net learns from the on-the-fly loader; the batches it saw are num_workers=0's."""
    from anoplug.train import Trainer

    ds = SyntheticAnomalyDataset(source, "cutpaste", p=0.5, seed=3, length=24)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    it = iter(ds.loader(batch_size=4, num_workers=2, shuffle=False))
    seen: list = []

    def step(ctx):
        image, mask, label = next(it)
        seen.append((image, mask, label))
        return nn.functional.binary_cross_entropy_with_logits(net(image), mask)

    hist = Trainer({"net": net}, {"adam": opt}, step, steps=6, generator=torch.Generator().manual_seed(0)).fit()
    assert len(hist) == 6 and all(math.isfinite(r["loss"]) for r in hist)
    ref = list(ds.loader(batch_size=4, num_workers=0))[:6]
    for (a, b, c), (x, y, z) in zip(seen, ref, strict=True):
        assert torch.equal(a, x) and torch.equal(b, y) and torch.equal(c, z)


@pytest.mark.parametrize(("kw", "word"), [({"p": 1.5}, "p"), ({"p": -0.1}, "p"), ({"p": "0.5"}, "p"),
                                          ({"generator": "no-such-method"}, "generator"),
                                          ({"generator": "supersimplenet"}, "generator"),
                                          ({"seed": -1}, "seed"), ({"length": 0}, "length"),
                                          ({"output": "list"}, "output")])
def test_bad_input_names_the_parameter(source, kw, word):
    args = {"generator": "cutpaste", **kw}
    with pytest.raises(ValueError, match=rf"^{word}\b"):
        SyntheticAnomalyDataset(source, args.pop("generator"), **args)


def test_source_decoded_once_per_process():
    """Sample i reads image i % N (and NSA its pair) every epoch: each process decodes an image once."""
    reads: list[int] = []

    class Counting(list):
        def __getitem__(self, i):
            reads.append(i)
            return super().__getitem__(i)

    images = Counting(np.full((SIZE, SIZE, 3), 10 * k, np.uint8) for k in range(3))
    ds = SyntheticAnomalyDataset(images, "cutpaste", p=0.5, length=9)
    reads.clear()
    for e in range(3):
        ds.set_epoch(e)
        _ = [ds[i] for i in range(9)]
    assert sorted(reads) == [0, 1, 2]
