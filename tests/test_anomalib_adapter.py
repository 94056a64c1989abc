"""anoplug generators inside anomalib: the PerlinAnomalyGenerator drop-in and the v2 transform (issue 17 item 2).

Against the installed anomalib (2.7.0 when written): the adapter's outputs follow what
anomalib's own ``PerlinAnomalyGenerator`` returns on the same input, every sample is seeded by
anoplug's ``sample_seed(seed, n)``, and anomalib's DRAEM trains through Lightning with the
adapter in its ``augmenter`` slot, reproducibly from the seed. Offline: DRAEM gets an existing
empty ``dtd_dir``, so nothing is downloaded.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from anoplug.data.toy import ToyDataset
from anoplug.registry import get_registry
from anoplug.seeding import sample_seed
from anoplug.torchdata import is_synthetic, run_seed
from anoplug.types import Batch

generators = pytest.importorskip("anomalib.data.utils.generators", reason="anomalib is in the dev extra")
ad = pytest.importorskip("anoplug.integrations.anomalib")
PerlinAnomalyGenerator = generators.PerlinAnomalyGenerator

SIZE = 32


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return ToyDataset("metal", size=SIZE, length=8).batch(list(range(8))).image


def _cutpaste():
    return get_registry().generator_class("cutpaste")()


# -- conventions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_follow_anomalib_conventions(images: torch.Tensor, batched: bool, dtype: torch.dtype) -> None:
    x = (images[:4] if batched else images[0]).to(dtype)
    theirs_img, theirs_mask = PerlinAnomalyGenerator(probability=1.0)(x)
    ours_img, ours_mask = ad.AnoplugAnomalyGenerator("draem", probability=1.0, seed=0)(x)
    for ours, theirs in ((ours_img, theirs_img), (ours_mask, theirs_mask)):
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype and ours.device == theirs.device
    assert ours_img.shape == x.shape and ours_mask.shape == ((4, 1, SIZE, SIZE) if batched else (1, SIZE, SIZE))
    assert ours_mask.dtype == torch.float32
    assert set(ours_mask.unique().tolist()) <= {0.0, 1.0} and set(theirs_mask.unique().tolist()) <= {0.0, 1.0}
    assert 0.0 <= float(ours_img.min()) and float(ours_img.max()) <= 1.0
    assert ours_mask.flatten(1 if not batched else 2).sum(-1).gt(0).all()  # probability 1: every sample anomalous
    assert not torch.equal(ours_img, x)


def test_a_skipped_sample_comes_back_unchanged_as_in_anomalib(images: torch.Tensor) -> None:
    x = images[:3]
    for gen in (PerlinAnomalyGenerator(probability=0.0), ad.AnoplugAnomalyGenerator("cutpaste", probability=0.0)):
        out, mask = gen(x)
        assert torch.equal(out, x) and mask.shape == (3, 1, SIZE, SIZE) and not mask.any()


# -- seeding ----------------------------------------------------------------------------------------------------
def test_sample_n_is_seeded_by_anoplug(images: torch.Tensor) -> None:
    adapter = ad.AnoplugAnomalyGenerator(_cutpaste(), probability=1.0, seed=7)
    first, _ = adapter(images[:4])
    second, _ = adapter(images[:4])  # the count goes on: samples 4..7, new anomalies on the same images
    ref = _cutpaste()
    want1 = ref.generate(Batch(image=images[:4]), seeds=[sample_seed(7, n) for n in range(4)]).image
    want2 = ref.generate(Batch(image=images[:4]), seeds=[sample_seed(7, n) for n in range(4, 8)]).image
    assert torch.equal(first, want1) and torch.equal(second, want2)
    assert not torch.equal(first, second)
    assert adapter.count == 8 and [r["sample_seed"] for r in adapter.last] == [sample_seed(7, n) for n in range(4, 8)]


def test_probability_is_the_torchdata_decision_and_others_pass_through(images: torch.Tensor) -> None:
    adapter = ad.AnoplugAnomalyGenerator("draem", probability=0.5, seed=3)
    x = torch.cat([images, images])
    out, mask = adapter(x)
    want = [is_synthetic(0.5, 3, n) for n in range(16)]
    assert [r["synthetic"] for r in adapter.last] == want and 0 < sum(want) < 16
    for n, (synthetic, rec) in enumerate(zip(want, adapter.last)):
        if synthetic:  # the method's own coin is set to 1 by name; DRAEM labels an empty Perlin mask "good"
            assert bool(mask[n].any()) == (rec["label"] != "good") and rec["sample_seed"] == sample_seed(3, n)
        else:
            assert torch.equal(out[n], x[n]) and not mask[n].any() and rec["label"] == "good"
    assert sum(r["label"] != "good" for r in adapter.last) >= 4


def test_a_sample_does_not_depend_on_its_batch(images: torch.Tensor) -> None:
    whole = ad.AnoplugAnomalyGenerator("draem", probability=0.7, seed=5)
    split = ad.AnoplugAnomalyGenerator("draem", probability=0.7, seed=5)
    out, mask = whole(images[:5])
    parts = [split(images[:1]), split(images[1:4]), split(images[4:5])]
    assert torch.equal(out, torch.cat([p[0] for p in parts])) and torch.equal(mask, torch.cat([p[1] for p in parts]))


def test_the_count_travels_in_the_state_dict(images: torch.Tensor) -> None:
    def holder(seed: int) -> torch.nn.Module:
        m = torch.nn.Module()
        m.augmenter = ad.AnoplugAnomalyGenerator("cutpaste", probability=1.0, seed=seed)
        return m

    a = holder(11)
    a.augmenter(images[:3])
    state = copy.deepcopy(a.state_dict())
    assert state["augmenter._extra_state"] == {"seed": 11, "count": 3}
    b = holder(0)
    b.load_state_dict(state)  # a resumed checkpoint: seed and count restored
    assert torch.equal(a.augmenter(images[:3])[0], b.augmenter(images[:3])[0])
    other = holder(12)
    other.augmenter.reset(3)
    assert not torch.equal(other.augmenter(images[:3])[0], holder(11).augmenter(images[:3])[0])


def test_paired_source_borrows_the_next_image_of_the_batch(images: torch.Tensor) -> None:
    nsa = get_registry().generator_class("nsa")
    adapter = ad.AnoplugAnomalyGenerator(nsa(), probability=1.0, seed=1)
    out, _ = adapter(images[:3])
    want = nsa().generate(Batch(image=images[:3]).with_conditions(source_image=images[[1, 2, 0]]),
                          seeds=[sample_seed(1, n) for n in range(3)])
    assert torch.equal(out, want.image)


def test_bad_input_is_one_clear_error(images: torch.Tensor) -> None:
    adapter = ad.AnoplugAnomalyGenerator("cutpaste", probability=1.0)
    normalised = (images[:2] - 0.45) / 0.225  # ImageNet-normalised, as GLASS's pre-processor makes them
    with pytest.raises(ValueError, match=r"in \[0, 1\].*denormalise"):
        adapter(normalised)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        adapter(images[:2, :1])
    with pytest.raises(ValueError, match="probability"):
        ad.AnoplugAnomalyGenerator("cutpaste", probability=1.5)
    with pytest.raises(ValueError, match="unknown generator"):
        ad.AnoplugAnomalyGenerator("no-such-method")
    with pytest.raises(ValueError, match="feature-level"):
        ad.AnoplugAnomalyGenerator("supersimplenet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_images_on_the_gpu_come_back_on_the_gpu(images: torch.Tensor) -> None:
    cpu = ad.AnoplugAnomalyGenerator("draem", probability=1.0, seed=2)(images[:2])
    out, mask = ad.AnoplugAnomalyGenerator("draem", probability=1.0, seed=2)(images[:2].cuda())
    assert out.is_cuda and mask.is_cuda and torch.equal(out.cpu(), cpu[0]) and torch.equal(mask.cpu(), cpu[1])


def test_importing_the_adapter_imports_neither_anomalib_nor_lightning() -> None:
    code = ("import sys, anoplug.integrations, anoplug.integrations.anomalib; "
            "print(sorted(m for m in ('anomalib', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# -- install ----------------------------------------------------------------------------------------------------
def test_install_replaces_every_perlin_generator_and_keeps_its_probability() -> None:
    from anomalib.models import Dsr

    dsr = Dsr(pre_processor=False, post_processor=False, evaluator=False, visualizer=False)
    adapter = ad.install(dsr, "cutpaste", seed=4)
    assert dsr.perlin_generator is adapter and adapter.probability == 0.5 and adapter.seed == 4
    glass_like = torch.nn.Module()  # GLASS keeps its generator one level down: Glass.model.augmentor
    glass_like.model = torch.nn.Module()
    glass_like.model.augmentor = PerlinAnomalyGenerator(probability=1.0)
    assert ad.install(glass_like, "draem").probability == 1.0 and isinstance(glass_like.model.augmentor,
                                                                              ad.AnoplugAnomalyGenerator)
    with pytest.raises(ValueError, match="no PerlinAnomalyGenerator"):
        ad.install(torch.nn.Linear(2, 2), "draem")


# -- an anomalib model trains with it ---------------------------------------------------------------------------
def _normals_dir(root: Path) -> Path:
    from PIL import Image

    from anoplug.types import to_uint8

    good = root / "good"
    good.mkdir(parents=True)
    for i, arr in enumerate(to_uint8(ToyDataset("metal", size=SIZE, length=8).batch(list(range(4))).image)):
        Image.fromarray(arr).save(good / f"{i:03d}.png")
    return good


def _train(model, loader, steps: int) -> tuple[list[float], list[torch.Tensor]]:
    import lightning

    losses: list[float] = []
    made: list[torch.Tensor] = []
    adapter = model.augmenter
    hook = adapter.register_forward_hook(lambda _m, _i, out: made.append(out[0].detach().clone()))

    class Losses(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = lightning.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                                num_sanity_val_steps=0, callbacks=[Losses()])
    try:
        trainer.fit(model, train_dataloaders=loader)
    finally:
        hook.remove()
    return losses, made


@pytest.mark.slow
def test_draem_trains_through_lightning_with_the_adapter(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from anomalib.data.datasets import FolderDataset
    from anomalib.models import Draem

    ds = FolderDataset(name="toy", root=tmp_path, normal_dir=_normals_dir(tmp_path), split="train")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, collate_fn=ds.collate_fn)
    dtd = tmp_path / "dtd"
    dtd.mkdir()  # exists: anomalib skips the DTD download; the adapter replaces the generator that would read it

    def draem(seed: int):
        model = Draem(dtd_dir=dtd, pre_processor=Draem.configure_pre_processor((SIZE, SIZE)), post_processor=False,
                      evaluator=False, visualizer=False)
        ad.install(model, "cutpaste", probability=1.0, seed=seed)
        return model

    model = draem(seed=0)
    init = copy.deepcopy(model.state_dict())
    losses, made = _train(model, loader, steps=2)
    assert model.augmenter.count == 4 and len(made) == 2  # called once per training step, on 2 images each
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert not any(dtd.iterdir())

    # what each step trained on is the seed's: sample n of the run is anoplug's sample n of seed 0
    batches = [torch.stack([ds[i].image for i in idx]) for idx in ((0, 1), (2, 3))]
    replay = ad.AnoplugAnomalyGenerator("cutpaste", probability=1.0, seed=0)
    assert all(torch.equal(replay(b)[0], m) for b, m in zip(batches, made))
    assert not torch.equal(ad.AnoplugAnomalyGenerator("cutpaste", probability=1.0, seed=1)(batches[0])[0], made[0])
    # and the first step's loss comes back from the same initial weights and seed (anomalib's own training_step)
    again = draem(seed=0)
    again.load_state_dict(init)  # the weights, and the adapter's count 0
    first = next(iter(loader))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # no trainer attached: Lightning warns that its self.log does nothing
        out = again.training_step(first)
    assert float(out["loss"]) == losses[0] and again.augmenter.count == 2


# -- the data-side v2 transform ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mvtec_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anoplug.data.writer import write_generated

    out = tmp_path_factory.mktemp("tree")
    write_generated(_cutpaste(), ToyDataset("metal", size=SIZE, length=6), out, n=4, seed=0, n_train=6, progress=False)
    return out


def _items(tree: Path, transform, workers: int) -> list:
    from anomalib.data.datasets import MVTecADDataset

    ds = MVTecADDataset(root=tree, category="metal", split="train", augmentations=transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, num_workers=workers, collate_fn=ds.collate_fn)
    return list(loader)


def test_transform_in_an_anomalib_dataset_adds_image_and_mask(mvtec_tree: Path) -> None:
    from anomalib.data.datasets import MVTecADDataset

    plain = MVTecADDataset(root=mvtec_tree, category="metal", split="train")
    t = ad.AnoplugAnomalyTransform("cutpaste", probability=1.0, seed=2)
    ds = MVTecADDataset(root=mvtec_tree, category="metal", split="train", augmentations=t)
    item, clean = ds[0], plain[0]
    key = ad.content_key(clean.image)
    want = _cutpaste().generate(Batch(image=clean.image[None]), seeds=[sample_seed(run_seed(2, 0), key)])
    assert torch.equal(item.image, want.image[0])
    assert item.gt_mask.dtype == clean.gt_mask.dtype and item.gt_mask.shape == clean.gt_mask.shape
    assert torch.equal(item.gt_mask.bool(), want.mask[0, 0].bool()) and item.gt_mask.any()
    assert int(item.gt_label) == 0  # anomalib labels by the file, not the mask (documented)


def test_transform_is_the_same_across_worker_counts_and_changes_with_the_epoch(mvtec_tree: Path) -> None:
    t = ad.AnoplugAnomalyTransform("draem", probability=0.6, seed=0)
    one, two = _items(mvtec_tree, t, 0), _items(mvtec_tree, t, 2)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.gt_mask, b.gt_mask)
    assert any(b.gt_mask.any() for b in one)
    t.set_epoch(1)
    later = _items(mvtec_tree, t, 0)
    assert not all(torch.equal(a.image, b.image) for a, b in zip(one, later))


def test_transform_keeps_other_inputs_and_refuses_two_images(images: torch.Tensor) -> None:
    t = ad.AnoplugAnomalyTransform("cutpaste", probability=1.0)
    boxes = tv_tensors.BoundingBoxes([[0, 0, 4, 4]], format="XYXY", canvas_size=(SIZE, SIZE))
    img, mask, kept = t(tv_tensors.Image(images[0]), tv_tensors.Mask(torch.zeros(SIZE, SIZE, dtype=torch.bool)), boxes)
    assert isinstance(img, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.bool
    assert mask.any() and kept is boxes
    with pytest.raises(ValueError, match="exactly one image"):
        t(tv_tensors.Image(images[0]), tv_tensors.Image(images[1]))
