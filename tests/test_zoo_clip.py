"""The committed tiny CLIP: loads offline like a real CLIP folder, and knows the toy categories zero-shot.

The accuracy test runs on toy images the model never saw (a dataset seed that neither
training nor the evaluation in train_log.json used) and checks the same threshold against
a randomly initialised CLIP of the same config, so it measures training, not the prompts.
"""

from __future__ import annotations

import json

import pytest
import torch

from anoplug.zoo.clip import TINY_CLIP_DIR

pytestmark = pytest.mark.skipif(not (TINY_CLIP_DIR / "model.safetensors").is_file(),
                                reason=f"the committed tiny CLIP is missing from {TINY_CLIP_DIR} (restore it from git)")

HELD_OUT_SEED = 7  # training used toy seed 0, the logged evaluation seed 1
#: the shipped model scores well above this on the set below, a random init far below
CATEGORY_THRESHOLD = 0.6


@pytest.fixture(scope="module")
def tiny():
    from anoplug.zoo.clip import load_clip

    return load_clip("tiny")


@pytest.fixture(scope="module")
def held_out():
    from anoplug.data.toy import CATEGORIES, ToyDataset

    images, cats, labels = [], [], []
    for c in CATEGORIES:
        b = ToyDataset(c, "test", size=64, seed=HELD_OUT_SEED, length=10).batch(range(10))
        images.append(b.image)
        cats += [c] * 10
        labels += list(b.label)
    return torch.cat(images), cats, labels


def test_committed_model_is_safetensors_and_loads_offline_with_transformers(monkeypatch) -> None:
    from transformers import CLIPModel, CLIPTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = {p.name for p in TINY_CLIP_DIR.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
    assert (TINY_CLIP_DIR / "model.safetensors").stat().st_size < 8_000_000
    model = CLIPModel.from_pretrained(str(TINY_CLIP_DIR), local_files_only=True)
    tok = CLIPTokenizer.from_pretrained(str(TINY_CLIP_DIR), local_files_only=True)
    assert model.config.vision_config.image_size == 64 and len(tok) > 100
    assert len(tok.tokenize("scratch")) == 1  # the project's word-level merges came along
    log = json.loads((TINY_CLIP_DIR / "train_log.json").read_text())
    assert "train_tiny_clip.py" in log["command"] and isinstance(log["seed"], int) and len(log["loss"]) > 100
    zs = log["zero_shot_heldout"]
    assert zs["category_accuracy"] > zs["category_chance"] and "defect_accuracy_mean" in zs


def test_a_saved_copy_in_the_same_layout_loads_and_embeds_identically(tiny, tmp_path) -> None:
    from transformers import CLIPImageProcessor, CLIPModel

    from anoplug.zoo.clip import encode_texts, load_clip, save_clip

    model, tok, prep = tiny
    save_clip(model, tok, tmp_path / "copy", prep)
    assert CLIPModel.from_pretrained(str(tmp_path / "copy"), local_files_only=True) is not None
    assert CLIPImageProcessor.from_pretrained(str(tmp_path / "copy"), local_files_only=True).crop_size["height"] == 64
    model2, tok2, prep2 = load_clip(tmp_path / "copy")
    assert prep2 == prep
    texts = ["a photo of woven fabric", "a crack in a capsule"]
    torch.testing.assert_close(encode_texts(model2, tok2, texts), encode_texts(model, tok, texts), rtol=0, atol=0)


def test_missing_folder_is_a_clear_error(tmp_path) -> None:
    from anoplug.diffusion.base import WeightsNotFoundError
    from anoplug.zoo.clip import load_clip

    with pytest.raises(WeightsNotFoundError, match="save_pretrained"):
        load_clip(tmp_path / "nothing-here")


def test_zero_shot_category_accuracy_is_well_above_chance_and_a_random_clip_fails(tiny, held_out) -> None:
    from transformers import CLIPModel

    from anoplug.diffusion.tiny import seeded
    from anoplug.zoo.clip import toy_category_prompts, zero_shot

    model, tok, prep = tiny
    images, cats, _ = held_out
    prompts = toy_category_prompts()
    acc = zero_shot(model, tok, images, prompts, preprocess=prep).accuracy(cats)
    assert acc >= CATEGORY_THRESHOLD + 0.15, f"tiny CLIP zero-shot category accuracy {acc:.3f} (chance 0.1)"
    with seeded(0):
        random_clip = CLIPModel(model.config).eval()
    chance_like = zero_shot(random_clip, tok, images, prompts, preprocess=prep).accuracy(cats)
    assert chance_like < CATEGORY_THRESHOLD, f"a random CLIP reaches {chance_like:.3f}: the threshold measures nothing"


def test_zero_shot_defect_type_on_textures_beats_chance_and_a_random_clip_does_not(tiny) -> None:
    """Within a texture category (good + 3-4 defect types, chance 0.2-0.25) the shipped model tells defects apart.

    Objects (capsule, nut, bottle) stay near chance at 64 px — docs/zoo.md lists every category.
    """
    from transformers import CLIPModel

    from anoplug.data.toy import ToyDataset
    from anoplug.diffusion.tiny import seeded
    from anoplug.zoo.clip import toy_defect_prompts, zero_shot

    model, tok, prep = tiny
    with seeded(0):
        random_clip = CLIPModel(model.config).eval()
    shipped, rand = [], []
    for c in ("fabric", "metal", "wood", "carpet", "tile"):
        b = ToyDataset(c, "test", size=64, seed=HELD_OUT_SEED, length=20).batch(range(20))
        shipped.append(zero_shot(model, tok, b.image, toy_defect_prompts(c), preprocess=prep).accuracy(b.label))
        rand.append(zero_shot(random_clip, tok, b.image, toy_defect_prompts(c), preprocess=prep).accuracy(b.label))
    assert sum(shipped) / 5 >= 0.33, f"defect-type accuracy per texture {shipped} (chance 0.2-0.25)"
    assert sum(rand) / 5 < 0.3, f"a random CLIP reaches {rand}: the threshold measures nothing"


def test_embeddings_are_unit_norm_and_deterministic(tiny, held_out) -> None:
    from anoplug.zoo.clip import encode_images, encode_texts

    model, tok, prep = tiny
    images = held_out[0][:8]
    a, b = encode_images(model, prep(images)), encode_images(model, prep(images.clone()))
    assert torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(8))
    t1, t2 = encode_texts(model, tok, ["a normal hex nut", "a hole in ceramic tiles"]), \
        encode_texts(model, tok, ["a normal hex nut", "a hole in ceramic tiles"])
    assert torch.equal(t1, t2)
    torch.testing.assert_close(t1.norm(dim=-1), torch.ones(2))
    assert a.shape[1] == t1.shape[1] == model.config.projection_dim


def test_contrastive_loss_is_clip_loss_and_treats_repeated_captions_as_positives(tiny, held_out) -> None:
    from anoplug.zoo.clip import caption_groups, contrastive_loss, tokenize

    model, tok, prep = tiny
    captions = ["a normal woven fabric", "a hole in woven fabric", "a normal woven fabric", "a crack in a capsule"]
    enc = tokenize(tok, captions)
    with torch.no_grad():
        out = model(**enc, pixel_values=prep(held_out[0][:4]), return_loss=True)
    # no repeated captions declared: exactly transformers' own CLIP loss
    torch.testing.assert_close(contrastive_loss(out.logits_per_image), out.loss)
    # captions 0 and 2 are the same string, so their text embeddings (logit columns) are equal and no
    # model can rank one above the other: as positives the tie is the optimum (zero gradient); as
    # negatives (plain CLIP) the loss keeps pushing the two apart
    groups = caption_groups(captions)
    assert groups.tolist() == [0, 1, 0, 2]
    tied = torch.where(groups[:, None] == groups[None, :], 20.0, -20.0).requires_grad_(True)
    contrastive_loss(tied, groups).backward()
    assert float(tied.grad.abs().max()) < 1e-6
    tied.grad = None
    contrastive_loss(tied).backward()
    assert float(tied.grad[0, 2]) > 0.1 and float(tied.grad[0, 0]) < -0.1


def test_preprocess_agrees_with_clip_image_processor() -> None:
    import numpy as np
    from transformers import CLIPImageProcessor

    from anoplug.zoo.clip import ClipPreprocess

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 15, generator=g), size=(96, 120), mode="bilinear")
    img = (img * 255).round() / 255
    ours = ClipPreprocess(size=64, crop=64)(img)
    proc = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    theirs = proc(images=[(img[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 64, 64)
    assert float((ours - theirs).abs().mean()) < 0.02  # PIL vs torch bicubic: same geometry, tiny kernel differences
