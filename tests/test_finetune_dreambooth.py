"""DreamBooth fine-tuning with prior preservation (anoplug.diffusion.finetune.dreambooth) on the tiny base.

Each test fails when its mechanism is removed: the instance loss falls; the frozen parts stay
bit-identical; the prior term weighs what λ says (λ = 0: the class images cannot matter; λ = 1:
they do, so a dropped prior batch fails); the class images are a deterministic function of the
frozen base, the seed and the image index; the saved pipeline loads back with the same output.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from anoplug.diffusion.finetune import common as C  # noqa: E402
from anoplug.diffusion.finetune import dreambooth as D  # noqa: E402
from anoplug.diffusion.loading import Parts, load_pipeline  # noqa: E402
from tests.finetune_data import checkerboard, fresh_parts  # noqa: E402

INSTANCE, CLASS = D.dreambooth_prompts("nut")




def snapshot(module) -> dict:
    return {n: t.detach().clone() for n, t in module.state_dict().items()}


def same(module, snap) -> bool:
    return all(torch.equal(t, snap[n]) for n, t in module.state_dict().items())


@pytest.fixture(scope="module")
def base():
    return load_pipeline("tiny-base")


@pytest.fixture(scope="module")
def instance(base):
    return C.encode_latents(Parts.from_pipeline(base), checkerboard())


@pytest.fixture(scope="module")
def priors(base):
    """Two sets of class images from the frozen base (few sampling steps to stay fast)."""
    return [D.make_prior(base, CLASS, 2, seed=s, num_inference_steps=3) for s in (0, 100)]


def test_prompts_bind_an_identifier_to_the_class():
    assert (INSTANCE, CLASS) == ("a photo of sks nut", "a photo of nut")


def test_instance_loss_falls_and_only_the_unet_changes(base, instance, tmp_path):
    parts = fresh_parts(base)
    unet0, te0, vae0 = snapshot(parts.unet), snapshot(parts.text_encoder), snapshot(parts.vae)
    with torch.no_grad():
        cond = parts.encode_text([INSTANCE] * 2)
    before = C.heldout_loss(parts.unet, parts.scheduler, instance, cond, repeats=8)
    history = D.train_dreambooth(parts, instance, INSTANCE, steps=10, lr=1e-4, generator=torch.Generator().manual_seed(0))
    after = C.heldout_loss(parts.unet, parts.scheduler, instance, cond, repeats=8)
    assert len(history) == 10 and "prior_loss" not in history[0]
    assert after < 0.7 * before, (before, after)
    assert not same(parts.unet, unet0), "the UNet did not train"
    assert same(parts.text_encoder, te0), "the frozen text encoder changed"
    assert same(parts.vae, vae0), "the VAE changed"
    # the fine-tuned model as a diffusers pipeline directory, read back by anoplug's loader
    D.save_pipeline(tmp_path / "db", parts)
    back = load_pipeline(tmp_path / "db")
    z = torch.randn(instance.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = parts.unet(z, torch.tensor([200, 800]), encoder_hidden_states=cond).sample
        back_cond = back.text_encoder(parts.tokenize([INSTANCE] * 2))[0]
        theirs = back.unet(z, torch.tensor([200, 800]), encoder_hidden_states=back_cond).sample
        plain = base.unet(z, torch.tensor([200, 800]), encoder_hidden_states=cond).sample
    assert torch.equal(ours, theirs)
    assert (ours - plain).abs().max() > 1e-3


def _train(base, instance, prior, weight, steps=2):
    parts = fresh_parts(base)
    history = D.train_dreambooth(parts, instance, INSTANCE, prior=prior, prior_loss_weight=weight, steps=steps,
                                 lr=1e-4, generator=torch.Generator().manual_seed(7))
    return parts.unet, history


def test_prior_term_weighs_what_lambda_says(base, instance, priors):
    a, b = priors
    assert not torch.equal(a.latents, b.latents)
    u0a, _ = _train(base, instance, a, 0.0)
    u0b, _ = _train(base, instance, b, 0.0)
    assert same(u0a, snapshot(u0b)), "with prior_loss_weight=0 the class images still changed the update"
    u1a, ha = _train(base, instance, a, 1.0)
    u1b, _ = _train(base, instance, b, 1.0)
    assert not same(u1a, snapshot(u1b)), "with prior_loss_weight=1 the class images do not reach the loss"
    row = ha[0]
    assert row["prior_loss"] > 0 and row["instance_loss"] > 0
    assert row["loss"] == pytest.approx(row["instance_loss"] + row["prior_loss"], rel=1e-5)
    _, h2 = _train(base, instance, a, 2.0, steps=1)
    assert h2[0]["loss"] == pytest.approx(h2[0]["instance_loss"] + 2.0 * h2[0]["prior_loss"], rel=1e-5)


def test_class_images_come_deterministically_from_the_frozen_base(base, priors):
    a = priors[0]
    assert a.images.shape == (2, 3, 64, 64) and a.latents.shape == (2, 4, 16, 16) and a.prompt == CLASS
    fresh = load_pipeline("tiny-base")
    assert torch.equal(D.make_prior(fresh, CLASS, 2, seed=0, num_inference_steps=3).images, a.images)
    # image i has its own generator: other counts and batch sizes give the same images (up to batched rounding)
    again = D.make_prior(fresh, CLASS, 3, seed=0, num_inference_steps=3, batch_size=1)
    assert torch.allclose(again.images[:2], a.images, atol=1e-5), "class image i must depend only on the base, seed and i"
    assert torch.allclose(again.latents[:2], a.latents, atol=1e-4)
    assert not torch.equal(priors[1].images, a.images), "another seed gave the same class images"
    tuned = fresh_parts(base)
    with torch.no_grad():
        for p in tuned.unet.parameters():
            p.mul_(1.05)
    pipe = type(base)(**{**base.components, "unet": tuned.unet}, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    other = D.make_prior(pipe, CLASS, 2, seed=0, num_inference_steps=3)
    assert not torch.equal(other.images, a.images), "class images do not depend on the model that makes them"
    with pytest.raises(ValueError, match="at least one"):
        D.make_prior(base, CLASS, 0)


def test_text_encoder_trains_only_when_asked(base, instance, priors):
    parts = fresh_parts(base)
    te0, vae0 = snapshot(parts.text_encoder), snapshot(parts.vae)
    history = D.train_dreambooth(parts, instance, INSTANCE, prior=priors[0], train_text_encoder=True, steps=2, lr=1e-4,
                                 generator=torch.Generator().manual_seed(0))
    assert not same(parts.text_encoder, te0), "train_text_encoder=True left the text encoder unchanged"
    assert same(parts.vae, vae0)
    assert "prior_loss" in history[-1]
