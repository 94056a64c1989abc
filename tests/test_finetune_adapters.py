"""T2I-Adapter and IP-Adapter training (anoplug.diffusion.finetune.t2i_adapter / .ip_adapter) on the tiny base.

Each test fails when its mechanism is removed. T2I-Adapter: one feature per UNet level at the
latent's size (``channels`` = the UNet's widths, ``downscale_factor`` = the VAE's ×4), the
paper's cubic timestep draw, features reused across steps (the UNet pops the list it gets),
training that lowers the held-out loss, moves only the adapter and makes the output follow
the hint, and diffusers' ``T2IAdapter.from_pretrained`` / ``StableDiffusionAdapterPipeline``.
IP-Adapter: scale 0 is the base UNet bit for bit, the image prompt changes the output, the
condition dropout, training of only the projection and ``to_k_ip``/``to_v_ip``, and the file
loading through diffusers' ``pipe.load_ip_adapter`` (image encoder included) with the same outputs.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from anoplug.diffusion.finetune import ip_adapter as IP  # noqa: E402
from anoplug.diffusion.finetune import t2i_adapter as TA  # noqa: E402
from anoplug.diffusion.finetune.common import noise_prediction_loss, uniform_timesteps  # noqa: E402
from anoplug.diffusion.finetune.conditioned import encode_pairs  # noqa: E402
from anoplug.diffusion.finetune.controlnet import edge_hint  # noqa: E402
from anoplug.diffusion.loading import load_pipeline  # noqa: E402
from tests.finetune_data import fresh_parts  # noqa: E402

STEPS = 20


def toy_images():
    """8 colour-inverted toy nuts and capsules (a look the base never saw) and their captions."""
    from anoplug.data.toy import render

    batches = [render(c, "test", i, size=64) for c in ("nut", "capsule") for i in range(4)]
    return 1 - torch.cat([b.image for b in batches]), [t for b in batches for t in b.text]


def snapshot(*modules):
    return [{n: t.detach().clone() for n, t in m.state_dict().items()} for m in modules]


def unchanged(module, before, skip=()):
    return [n for n, t in module.state_dict().items() if n in before and not torch.equal(t, before[n])
            and not any(s in n for s in skip)]


def probe(seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 16, 16, generator=g), torch.tensor([600, 150])


@pytest.fixture(scope="module")
def base():
    return load_pipeline("tiny-base")


# -- T2I-Adapter ------------------------------------------------------------------------------------------------
def t2i_heldout(parts, adapter, data, hints=None):
    hint = (data.condition if hints is None else hints).repeat(2, 1, 1, 1)
    g = torch.Generator().manual_seed(12345)
    model = lambda x, t, encoder_hidden_states: TA.adapted_eps(parts.unet, TA.adapter_features(adapter, hint), x, t,
                                                               encoder_hidden_states)
    with torch.no_grad():
        return float(noise_prediction_loss(model, parts.scheduler, data.latents.repeat(2, 1, 1, 1),
                                           data.text.repeat(2, 1, 1), generator=g))


@pytest.fixture(scope="module")
def t2i(base):
    parts = fresh_parts(base)
    images, prompts = toy_images()
    data = encode_pairs(parts, images, prompts, edge_hint(images))
    adapter = TA.make_t2i_adapter(parts.unet, vae_factor=parts.vae_factor, in_channels=1, num_res_blocks=1)
    frozen = snapshot(parts.unet, parts.vae, parts.text_encoder)
    fresh = snapshot(adapter)[0]
    before = t2i_heldout(parts, adapter, data)
    history = TA.train_t2i_adapter(parts, adapter, data, steps=STEPS, lr=2e-3, batch_size=4,
                                   generator=torch.Generator().manual_seed(0))
    return {"parts": parts, "data": data, "adapter": adapter, "frozen": frozen, "fresh": fresh, "before": before,
            "after": t2i_heldout(parts, adapter, data), "history": history}


def test_t2i_features_match_the_unet_levels(t2i):
    parts, adapter = t2i["parts"], t2i["adapter"]
    assert adapter.config.channels == list(parts.unet.config.block_out_channels)
    assert adapter.config.downscale_factor == parts.vae_factor == 4
    with torch.no_grad():
        feats = TA.adapter_features(adapter, torch.rand(1, 1, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 16, 16), (64, 8, 8), (128, 4, 4)]


def test_cubic_timesteps_favour_the_noisy_end():
    g = torch.Generator().manual_seed(0)
    cubic = TA.cubic_timesteps(20000, 1000, g).float()
    uniform = uniform_timesteps(20000, 1000, g).float()
    assert cubic.min() >= 0 and cubic.max() <= 999
    assert abs(float(cubic.mean()) - 750) < 10 and abs(float(uniform.mean()) - 500) < 10
    assert abs(float((cubic >= 500).float().mean()) - 0.5 ** (1 / 3)) < 0.02  # P(u³ ≤ ½) = 0.794, not ½


def test_t2i_training_lowers_the_heldout_loss_and_moves_only_the_adapter(t2i):
    assert len(t2i["history"]) == STEPS
    assert t2i["after"] < 0.9 * t2i["before"], (t2i["before"], t2i["after"])
    parts = t2i["parts"]
    for module, before, name in zip((parts.unet, parts.vae, parts.text_encoder), t2i["frozen"], ("unet", "vae", "te")):
        assert not unchanged(module, before), f"{name} changed"
    live = t2i["adapter"].state_dict()
    assert all(not torch.equal(live[n], t2i["fresh"][n]) for n in live), "some adapter weights did not train"


def test_t2i_output_follows_the_hint(t2i):
    parts, adapter, data = t2i["parts"], t2i["adapter"], t2i["data"]
    x, t = probe()
    with torch.no_grad():
        a = TA.adapted_eps(parts.unet, TA.adapter_features(adapter, data.condition[:2]), x, t, data.text[:2])
        b = TA.adapted_eps(parts.unet, TA.adapter_features(adapter, data.condition[4:6]), x, t, data.text[:2])
    assert (a - b).abs().max() > 1e-4
    other = t2i_heldout(parts, adapter, data, hints=data.condition.roll(4, 0))
    assert t2i["after"] < 0.95 * other, (t2i["after"], other)  # each nut gets a capsule's edges and back


def test_adapted_model_reuses_its_features_at_every_step(t2i):
    parts, adapter, data = t2i["parts"], t2i["adapter"], t2i["data"]
    x, _ = probe()
    x, t = x[:1], torch.tensor(500)
    with torch.no_grad():
        feats = TA.adapter_features(adapter, data.condition[:1])
        first = TA.adapted_eps(parts.unet, feats, x, t, data.text[:1])
        second = TA.adapted_eps(parts.unet, feats, x, t, data.text[:1])  # the UNet pops the list it gets: not ours
        bare = parts.unet(x, t, encoder_hidden_states=data.text[:1]).sample
        model = TA.AdaptedModel(parts.unet, adapter, data.condition[:1])
        both = model(torch.cat([x, x]), t, torch.cat([data.empty_text, data.text[:1]]))
    assert len(feats) == 3 and torch.equal(first, second) and not torch.equal(first, bare)
    torch.testing.assert_close(both[1:], first, rtol=1e-5, atol=1e-6)  # the hint's features in both guidance halves


def test_t2i_save_load_and_diffusers_adapter_pipeline(base, t2i, tmp_path):
    from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

    parts, adapter, data = t2i["parts"], t2i["adapter"], t2i["data"]
    TA.save_t2i_adapter(adapter, tmp_path / "t2i")
    again = T2IAdapter.from_pretrained(str(tmp_path / "t2i"), local_files_only=True).eval()
    x, t = probe()
    with torch.no_grad():
        mine = TA.adapted_eps(parts.unet, TA.adapter_features(adapter, data.condition[:2]), x, t, data.text[:2])
        theirs = TA.adapted_eps(parts.unet, TA.adapter_features(again, data.condition[:2]), x, t, data.text[:2])
    assert torch.equal(mine, theirs)
    comps = {k: v for k, v in base.components.items() if k != "image_encoder"}
    pipe = StableDiffusionAdapterPipeline(**{**comps, "unet": parts.unet}, adapter=again)
    kw = dict(prompt="a normal hex nut on a dark background", num_inference_steps=3, guidance_scale=3.0, height=64,
              width=64, output_type="latent")
    with torch.no_grad():
        a = pipe(image=data.condition[:1], generator=torch.Generator().manual_seed(0), **kw).images
        b = pipe(image=data.condition[4:5], generator=torch.Generator().manual_seed(0), **kw).images
    assert a.shape == (1, 4, 16, 16) and (a - b).abs().max() > 1e-4


# -- IP-Adapter -------------------------------------------------------------------------------------------------
def ip_heldout(parts, adapter, data, embeds=None):
    emb = (data.condition if embeds is None else embeds).repeat(2, 1)
    g = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        return float(noise_prediction_loss(parts.unet, parts.scheduler, data.latents.repeat(2, 1, 1, 1),
                                           adapter.context(data.text.repeat(2, 1, 1), emb), generator=g))


@pytest.fixture(scope="module")
def ip(base):
    parts = fresh_parts(base)
    images, prompts = toy_images()
    encoder = IP.load_image_encoder("random")  # pinned: the test must not change when the tiny CLIP lands
    data = IP.encode_image_pairs(parts, encoder, images, prompts)
    x, t = probe()
    with torch.no_grad():
        base_eps = parts.unet(x, t, encoder_hidden_states=data.text[:2]).sample
    frozen = snapshot(parts.unet, parts.vae, parts.text_encoder, encoder)
    adapter = IP.install_ip_adapter(parts.unet, image_embed_dim=data.condition.shape[1])
    fresh = snapshot(adapter)[0]
    before = ip_heldout(parts, adapter, data)
    history = IP.train_ip_adapter(parts, adapter, data, steps=STEPS, lr=1e-3, batch_size=4,
                                  generator=torch.Generator().manual_seed(0))
    return {"parts": parts, "data": data, "encoder": encoder, "adapter": adapter, "frozen": frozen, "fresh": fresh,
            "base_eps": base_eps, "before": before, "after": ip_heldout(parts, adapter, data), "history": history,
            "images": images}


def test_ip_scale_zero_is_the_base_unet_and_the_image_prompt_changes_the_output(ip):
    parts, adapter, data = ip["parts"], ip["adapter"], ip["data"]
    x, t = probe()
    with torch.no_grad():
        adapter.set_scale(0.0)
        off = parts.unet(x, t, encoder_hidden_states=adapter.context(data.text[:2], data.condition[:2])).sample
        adapter.set_scale(1.0)
        a = parts.unet(x, t, encoder_hidden_states=adapter.context(data.text[:2], data.condition[:2])).sample
        b = parts.unet(x, t, encoder_hidden_states=adapter.context(data.text[:2], data.condition[4:6])).sample
    assert torch.equal(off, ip["base_eps"])
    assert (a - ip["base_eps"]).abs().max() > 1e-3 and (a - b).abs().max() > 1e-5


def test_ip_layers_sit_on_every_cross_attention_and_start_from_to_k_to_v(base):
    parts = fresh_parts(base)
    adapter = IP.install_ip_adapter(parts.unet, image_embed_dim=32)
    procs = parts.unet.attn_processors
    cross = [n for n in procs if n.endswith("attn2.processor")]
    assert adapter.layer_names == cross and len(cross) == 10  # tiny base: 3 down + 1 mid + 3x2 up
    assert all(isinstance(procs[n], IP.DecoupledIPAttnProcessor) for n in cross)
    assert not any(isinstance(procs[n], IP.DecoupledIPAttnProcessor) for n in procs if n not in cross)
    attn = parts.unet.get_submodule(cross[0][: -len(".processor")])
    assert torch.equal(procs[cross[0]].to_k_ip.weight, attn.to_k.weight)
    assert torch.equal(procs[cross[0]].to_v_ip.weight, attn.to_v.weight)
    adapter.remove(parts.unet)
    assert not any(isinstance(p, IP.DecoupledIPAttnProcessor) for p in parts.unet.attn_processors.values())


def test_ip_condition_dropout_zeroes_the_image_or_empties_the_text(ip):
    parts, adapter, data = ip["parts"], ip["adapter"], ip["data"]
    loss = lambda d, **kw: float(IP.ip_adapter_loss(parts, adapter, d, batch_size=4,
                                                    generator=torch.Generator().manual_seed(5), **kw))
    none = dict(drop_image=0.0, drop_text=0.0, drop_both=0.0)
    from dataclasses import replace

    with torch.no_grad():
        kept = loss(data, **none)
        no_image = loss(data, drop_image=1.0, drop_text=0.0, drop_both=0.0)
        no_text = loss(data, drop_image=0.0, drop_text=1.0, drop_both=0.0)
        no_both = loss(data, drop_image=0.0, drop_text=0.0, drop_both=1.0)
        zero_emb = replace(data, condition=torch.zeros_like(data.condition))
        empty_text = replace(data, text=data.empty_text.expand_as(data.text).clone())
        assert no_image == loss(zero_emb, **none) != kept
        assert no_text == loss(empty_text, **none) != kept
        assert no_both == loss(replace(zero_emb, text=empty_text.text), **none)


def test_ip_training_lowers_the_heldout_loss_and_moves_only_the_adapter(ip):
    assert len(ip["history"]) == STEPS
    assert ip["after"] < 0.85 * ip["before"], (ip["before"], ip["after"])
    parts = ip["parts"]
    mods = (parts.unet, parts.vae, parts.text_encoder, ip["encoder"])
    for module, before, name in zip(mods, ip["frozen"], ("unet", "vae", "te", "image encoder")):
        # the UNet's state now also holds the processors' to_k_ip/to_v_ip; its own weights must be untouched
        assert not unchanged(module, before), f"{name} changed"
        assert set(before) <= set(module.state_dict())
    live = ip["adapter"].state_dict()
    assert all(not torch.equal(live[n], ip["fresh"][n]) for n in live), "some adapter weights did not train"
    assert {n.split(".")[0] for n in live} == {"image_proj", "layers"}


def test_ip_file_has_the_released_layout_and_loads_with_diffusers(base, ip, tmp_path):
    import numpy as np
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from PIL import Image
    from safetensors import safe_open

    parts, adapter, data = ip["parts"], ip["adapter"], ip["data"]
    adapter.set_scale(0.7)
    path = IP.save_ip_adapter(adapter, tmp_path / "ip", image_encoder=ip["encoder"])
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    ids = range(1, 2 * 10, 2)
    assert keys == ({f"image_proj.{k}" for k in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")}
                    | {f"ip_adapter.{i}.to_{kv}_ip.weight" for i in ids for kv in "kv"})

    pipe = load_pipeline("tiny-base")  # a second copy of the base: the same (frozen) UNet weights, no adapter
    pipe.load_ip_adapter(str(tmp_path / "ip"), subfolder="", weight_name=IP.WEIGHT_NAME)
    pipe.set_ip_adapter_scale(0.7)
    assert isinstance(pipe.unet.attn_processors[adapter.layer_names[0]], IPAdapterAttnProcessor2_0)
    assert pipe.image_encoder is not None  # loaded from ip/image_encoder
    x, t = probe()
    with torch.no_grad():
        mine = parts.unet(x, t, encoder_hidden_states=adapter.context(data.text[:2], data.condition[:2])).sample
        theirs = pipe.unet(x, t, encoder_hidden_states=data.text[:2],
                           added_cond_kwargs={"image_embeds": [data.condition[:2, None]]}).sample
        pils = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in ip["images"][:2]]
        embeds, uncond = pipe.encode_image(pils, torch.device("cpu"), 1)
    assert torch.equal(mine, theirs)
    torch.testing.assert_close(embeds, data.condition[:2], rtol=1e-4, atol=1e-5)  # same preprocessing and encoder
    assert not uncond.any()  # diffusers' unconditional image prompt is the zero embedding, as in training

    again = IP.install_ip_adapter(fresh_parts(base).unet, image_embed_dim=data.condition.shape[1], seed=1)
    IP.load_ip_adapter_weights(again, path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), adapter.state_dict().values()))
    adapter.set_scale(1.0)


def test_image_encoder_loads_from_any_local_clip_folder(tmp_path):
    """A CLIPModel folder (the tiny CLIP's layout, or a real CLIP's) gives its vision tower and projection."""
    from transformers import CLIPModel

    from anoplug.diffusion.tiny import seeded, tiny_tokenizer
    from anoplug.zoo.clip import ClipPreprocess, tiny_clip_config

    cfg = tiny_clip_config(tiny_tokenizer(), vision_width=32, vision_layers=1, text_width=32, text_layers=1,
                           projection_dim=16)
    with seeded(0):
        clip = CLIPModel(cfg).eval()
    clip.save_pretrained(str(tmp_path / "clip"), safe_serialization=True)
    enc = IP.load_image_encoder(tmp_path / "clip")
    assert enc.config.projection_dim == 16 and not any(p.requires_grad for p in enc.parameters())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pixels = ClipPreprocess(size=64, crop=64)(images)
        want = clip.get_image_features(pixel_values=pixels)
        want = want if isinstance(want, torch.Tensor) else want.pooler_output
    torch.testing.assert_close(IP.encode_image_prompt(enc, images), want)
    with pytest.raises(Exception, match="no CLIP image encoder"):
        IP.load_image_encoder(tmp_path / "nowhere")
