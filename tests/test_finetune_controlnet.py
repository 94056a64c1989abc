"""ControlNet training (anoplug.diffusion.finetune.controlnet) on the committed tiny base.

Each test fails when its mechanism is removed: the hint embedding must down-sample by the
VAE factor (×4 here, not diffusers' default ×8); an untrained ControlNet adds exactly zero
(zero convolutions), so it equals the base and ignores the hint; training lowers the held-out
loss, moves only the ControlNet and makes the output depend on the hint — the right hint
beats another image's; the weights go through ``save_pretrained`` /
``ControlNetModel.from_pretrained`` and run in diffusers' ``StableDiffusionControlNetPipeline``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from anoplug.diffusion.finetune import controlnet as CN  # noqa: E402
from anoplug.diffusion.finetune.common import noise_prediction_loss  # noqa: E402
from anoplug.diffusion.finetune.conditioned import encode_pairs  # noqa: E402
from anoplug.diffusion.loading import load_pipeline  # noqa: E402
from tests.finetune_data import fresh_parts  # noqa: E402

STEPS = 20


def toy_pairs():
    """8 colour-inverted toy nuts and capsules (a look the base never saw), their captions and edge-map hints."""
    from anoplug.data.toy import render

    batches = [render(c, "test", i, size=64) for c in ("nut", "capsule") for i in range(4)]
    images = 1 - torch.cat([b.image for b in batches])
    return images, [t for b in batches for t in b.text], CN.edge_hint(images)


def heldout(parts, controlnet, data, hints=None):
    """The loss on fixed (items, t, ε) draws that training never makes; ``hints`` replaces the data's."""
    g = torch.Generator().manual_seed(12345)
    hint = data.condition if hints is None else hints
    model = lambda x, t, encoder_hidden_states: CN.controlled_eps(parts.unet, controlnet, x, t, encoder_hidden_states,
                                                                   hint.repeat(2, 1, 1, 1))
    with torch.no_grad():
        return float(noise_prediction_loss(model, parts.scheduler, data.latents.repeat(2, 1, 1, 1),
                                           data.text.repeat(2, 1, 1), generator=g))


def eps_pair(parts, controlnet, data, hint_a, hint_b):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([600, 150])
    with torch.no_grad():
        return (CN.controlled_eps(parts.unet, controlnet, x, t, data.text[:2], hint_a),
                CN.controlled_eps(parts.unet, controlnet, x, t, data.text[:2], hint_b),
                parts.unet(x, t, encoder_hidden_states=data.text[:2]).sample)


@pytest.fixture(scope="module")
def base():
    return load_pipeline("tiny-base")


@pytest.fixture(scope="module")
def trained(base):
    parts = fresh_parts(base)
    images, prompts, hints = toy_pairs()
    data = encode_pairs(parts, images, prompts, hints)
    net = CN.make_controlnet(parts.unet, vae_factor=parts.vae_factor, conditioning_channels=1)
    fresh = {n: t.detach().clone() for n, t in net.state_dict().items()}
    frozen = {k: {n: t.detach().clone() for n, t in m.state_dict().items()}
              for k, m in (("unet", parts.unet), ("vae", parts.vae), ("text_encoder", parts.text_encoder))}
    fresh_eps = eps_pair(parts, net, data, hints[:2], hints[4:6])
    before = heldout(parts, net, data)
    history = CN.train_controlnet(parts, net, data, steps=STEPS, lr=2e-3, batch_size=4,
                                  generator=torch.Generator().manual_seed(0))
    return {"parts": parts, "data": data, "net": net, "fresh": fresh, "frozen": frozen, "fresh_eps": fresh_eps,
            "before": before, "after": heldout(parts, net, data), "history": history}


def test_hint_embedding_downsamples_by_the_vae_factor(base):
    assert CN.embedding_channels(8) == CN.DEFAULT_EMBEDDING_CHANNELS and CN.embedding_channels(4) == (16, 32, 96)
    assert CN.embedding_channels(2) == (16, 32)
    parts = fresh_parts(base)
    assert parts.vae_factor == 4
    with pytest.raises(ValueError, match="down-sample by 8"):  # diffusers' default: 64-px hints would give 8x8 maps
        CN.make_controlnet(parts.unet, vae_factor=4, conditioning_embedding_out_channels=CN.DEFAULT_EMBEDDING_CHANNELS)
    net = CN.make_controlnet(parts.unet, vae_factor=4, conditioning_channels=1)
    with torch.no_grad():
        emb = net.controlnet_cond_embedding(torch.rand(1, 1, 64, 64))
    assert emb.shape == (1, parts.unet.config.block_out_channels[0], 16, 16)  # the latent's size, added after conv_in


def test_a_fresh_controlnet_adds_exactly_zero_and_ignores_the_hint(trained):
    a, b, base_eps = trained["fresh_eps"]
    assert torch.equal(a, base_eps) and torch.equal(b, base_eps)
    zero = [n for n in trained["fresh"] if n.startswith(("controlnet_down_blocks", "controlnet_mid_block",
                                                         "controlnet_cond_embedding.conv_out"))]
    assert len(zero) == 2 * (len(trained["net"].controlnet_down_blocks) + 2)  # weight + bias of every zero conv
    assert all(not trained["fresh"][n].any() for n in zero)
    unet_sd = trained["parts"].unet.state_dict()  # the trainable copy starts as the UNet's encoder
    assert torch.equal(trained["fresh"]["down_blocks.0.resnets.0.conv1.weight"], unet_sd["down_blocks.0.resnets.0.conv1.weight"])


def test_training_lowers_the_heldout_loss(trained):
    assert len(trained["history"]) == STEPS and all("loss" in r for r in trained["history"])
    assert trained["after"] < 0.8 * trained["before"], (trained["before"], trained["after"])


def test_only_the_controlnet_changes(trained):
    parts = trained["parts"]
    for key, module in (("unet", parts.unet), ("vae", parts.vae), ("text_encoder", parts.text_encoder)):
        changed = [n for n, t in module.state_dict().items() if not torch.equal(t, trained["frozen"][key][n])]
        assert not changed, f"{key} changed: {changed[:3]}"
    live = trained["net"].state_dict()
    for n in ("controlnet_mid_block.weight", "controlnet_cond_embedding.conv_out.weight", "down_blocks.0.resnets.0.conv1.weight"):
        assert not torch.equal(live[n], trained["fresh"][n]), f"{n} did not train"


def test_the_trained_output_depends_on_the_hint(trained):
    parts, net, data = trained["parts"], trained["net"], trained["data"]
    a, b, _ = eps_pair(parts, net, data, data.condition[:2], data.condition[4:6])
    assert (a - b).abs().max() > 1e-4
    other = heldout(parts, net, data, hints=data.condition.roll(4, 0))  # each nut gets a capsule's edges and back
    assert trained["after"] < 0.97 * other, (trained["after"], other)


def test_save_and_load_through_diffusers(trained, tmp_path):
    from diffusers import ControlNetModel

    parts, net, data = trained["parts"], trained["net"], trained["data"]
    CN.save_controlnet(net, tmp_path / "cn")
    assert (tmp_path / "cn" / "diffusion_pytorch_model.safetensors").is_file()
    again = ControlNetModel.from_pretrained(str(tmp_path / "cn"), local_files_only=True)
    assert tuple(again.config.conditioning_embedding_out_channels) == (16, 32, 96)
    assert again.config.conditioning_channels == 1
    mine = eps_pair(parts, net, data, data.condition[:2], data.condition[4:6])
    theirs = eps_pair(parts, again.eval(), data, data.condition[:2], data.condition[4:6])
    assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1])
    assert all(torch.equal(a, b) for a, b in zip(CN.load_controlnet(tmp_path / "cn").state_dict().values(),
                                                 net.state_dict().values()))


def test_diffusers_controlnet_pipeline_runs_it_and_a_fresh_one_equals_the_base(base, trained):
    from diffusers import StableDiffusionControlNetPipeline

    parts, hint = trained["parts"], trained["data"].condition[:1]
    kw = dict(prompt="a normal hex nut on a dark background", num_inference_steps=3, guidance_scale=3.0, height=64,
              width=64, output_type="latent")
    run = lambda pipe, **extra: pipe(generator=torch.Generator().manual_seed(0), **kw, **extra).images
    fresh = CN.make_controlnet(base.unet, vae_factor=4, conditioning_channels=1)
    comps = {k: v for k, v in base.components.items()}
    with torch.no_grad():
        plain = run(base)
        with_fresh = run(StableDiffusionControlNetPipeline(**comps, controlnet=fresh), image=hint)
        trained_pipe = StableDiffusionControlNetPipeline(**{**comps, "unet": parts.unet}, controlnet=trained["net"])
        a = run(trained_pipe, image=hint)
        b = run(trained_pipe, image=trained["data"].condition[4:5])
    assert torch.equal(with_fresh, plain)
    assert (a - b).abs().max() > 1e-4


def test_controlled_model_repeats_the_hint_for_a_guidance_batch(trained):
    parts, net, data = trained["parts"], trained["net"], trained["data"]
    model = CN.ControlledModel(parts.unet, net, data.condition[:1])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(500)
    with torch.no_grad():
        both = model(torch.cat([x, x]), t, torch.cat([data.empty_text, data.text[:1]]))
        cond = model(x, t, data.text[:1])
        empty_branch = CN.ControlledModel(parts.unet, net, data.condition[:1], control_text=data.empty_text)(
            x, t, data.text[:1])
    torch.testing.assert_close(both[1:], cond, rtol=1e-5, atol=1e-6)
    assert (empty_branch - cond).abs().max() > 1e-5  # AdaBLDM's empty-prompt ControlNet branch is a different call


def test_hints():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1
    obj = torch.zeros(1, 1, 8, 8)
    obj[..., 1:6, 1:6] = 1
    tri = CN.trimap_hint(mask, obj)
    assert tri.shape == (1, 3, 8, 8) and torch.equal(tri.unique(), torch.tensor([0.0, 127 / 255, 1.0]))
    assert tri[0, :, 2, 2].eq(1).all() and tri[0, :, 1, 1].eq(127 / 255).all() and tri[0, :, 7, 7].eq(0).all()
    img = torch.zeros(1, 3, 16, 16)
    img[..., 8:] = 1
    edges = CN.edge_hint(img)
    assert edges.shape == (1, 1, 16, 16) and float(edges.max()) == 1.0
    assert edges[0, 0, :, 7:9].min() > 0.5 and edges[0, 0, :, :5].abs().max() == 0 and edges[0, 0, :, 11:].abs().max() == 0


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(base, tmp_path):
    parts = fresh_parts(base)
    images, prompts, hints = toy_pairs()
    data = encode_pairs(parts, images[:4], prompts[:4], hints[:4])

    def run(**options):
        net = CN.make_controlnet(parts.unet, vae_factor=4, conditioning_channels=1)
        CN.train_controlnet(parts, net, data, steps=4, lr=2e-3, batch_size=2, generator=torch.Generator().manual_seed(0),
                            **options)
        return net.state_dict()

    whole = run()
    run(checkpoint_every=2, checkpoint_dir=tmp_path)
    resumed = run(resume_from=tmp_path / "step-000002")
    assert all(torch.equal(whole[n], resumed[n]) for n in whole), "resume did not restore the ControlNet's weights"
