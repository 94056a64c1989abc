"""anoplug.diffusion: loading, tiny parts, attention processors, textual inversion.

Each test targets one mechanism and fails if that mechanism is removed. The sampling loop and
its hooks (blending, guidance, attention capture, latent optimisation) are tested in
``test_diffusion_sampling.py``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from anoplug.diffusion import attention as A  # noqa: E402
from anoplug.diffusion import inversion as I  # noqa: E402
from anoplug.diffusion import tiny  # noqa: E402
from anoplug.diffusion.loading import (  # noqa: E402
    Parts,
    TokenizerError,
    WeightsNotFoundError,
    check_tokenizer,
    load_pipeline,
    make_scheduler,
)
from anoplug.testing import block_network  # noqa: E402


@pytest.fixture(scope="module")
def sd():
    pipe = tiny.tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- tokenizer and loading -------------------------------------------------------------------
def test_tokenizer_is_local_and_knows_words():
    with block_network():
        tok = tiny.tiny_tokenizer()
        bert = tiny.tiny_tokenizer(kind="bert")
    assert tok.tokenize("a photo of a screw with a scratch") == [w + "</w>" for w in "a photo of a screw with a scratch".split()]
    assert "zzqx" not in tok.get_vocab() and len(tok("zzqx").input_ids) > 2  # unknown words fall back to bytes
    assert bert.tokenize("a crack") == ["a", "crack"]
    check_tokenizer(tok)


def test_stub_tokenizer_is_refused():
    class Stub:
        def __len__(self):
            return 2

    with pytest.raises(TokenizerError, match="only 2 tokens"):
        check_tokenizer(Stub())


def test_ldm_schedule_is_scaled_linear_with_offset():
    s = make_scheduler("ddim")
    assert abs(float(s.betas[0]) - 0.00085) < 1e-9 and abs(float(s.betas[-1]) - 0.012) < 1e-9
    mid = ((0.00085**0.5 + 0.012**0.5) / 2) ** 2  # scaled_linear, not diffusers' "linear" (which would be the mean)
    assert abs(float(s.betas[len(s.betas) // 2]) - mid) < 2e-5
    s.set_timesteps(200)
    assert int(s.timesteps[0]) == 996 and int(s.timesteps[-1]) == 1
    assert float(s.final_alpha_cumprod) == pytest.approx(float(s.alphas_cumprod[0]))  # set_alpha_to_one=False


def test_save_load_roundtrip_sd_and_ldm(sd, tmp_path):
    sd.save_pretrained(tmp_path / "sd")
    ldm = tiny.tiny_ldm_pipeline(seed=1)
    ldm.save_pretrained(tmp_path / "ldm")
    with block_network():
        sd2 = load_pipeline(tmp_path / "sd")
        ldm2 = load_pipeline(tmp_path / "ldm")
    assert sd2.anoplug_family == "sd" and ldm2.anoplug_family == "ldm"
    assert sd2.scheduler.config.timestep_spacing == "leading" and sd2.scheduler.config.steps_offset == 1
    for a, b in ((sd, sd2), (ldm, ldm2)):
        pa, pb = Parts.from_pipeline(a), Parts.from_pipeline(b)
        assert pa.family == pb.family
        z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ea, eb = pa.encode_text(["a photo of a nut"]), pb.encode_text(["a photo of a nut"])
            assert torch.allclose(ea, eb)
            ya = pa.unet(z, 10, encoder_hidden_states=ea).sample
            yb = pb.unet(z, 10, encoder_hidden_states=eb).sample
        assert torch.allclose(ya, yb, atol=1e-6)


def test_missing_weights_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with block_network(), pytest.raises(WeightsNotFoundError, match="huggingface-cli download"):
        load_pipeline("CompVis/ldm-text2im-large-256-not-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="model_index.json"):
        load_pipeline(tmp_path / "empty")


# -- attention processors ------------------------------------------------------------------------
def _unet_inputs(sd):
    parts = Parts.from_pipeline(sd)
    with torch.no_grad():
        cond = parts.encode_text(["a photo of a screw with a scratch"] * 2)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    toks = torch.zeros(cond.shape[1], dtype=torch.bool)
    toks[1:4] = True
    w = torch.ones(2, 1, 16, 16)
    w[..., :8] = 1.5  # left half re-weighted
    return parts, z, cond, toks, w


def test_reweighting_changes_attention_inside_the_mask_only(sd):
    parts, z, cond, toks, w = _unet_inputs(sd)
    attn = parts.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    hidden = torch.randn(2, 256, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))
    base = A.AttentionState(latent_size=(16, 16))
    rew = A.AttentionState(weight=w, tokens=toks, latent_size=(16, 16))
    with torch.no_grad():
        A.AnoplugAttnProcessor("l", base, capture=True, reweight=False)(attn, hidden, cond)
        A.AnoplugAttnProcessor("l", rew, capture=True, reweight=True)(attn, hidden, cond)
    a, b = base.maps["l"][0], rew.maps["l"][0]  # [B, pixels, tokens]
    inside = (w[0, 0] > 1).flatten()
    assert torch.equal(a[:, ~inside], b[:, ~inside]), "attention changed outside the mask"
    assert (a[:, inside] - b[:, inside]).abs().max() > 1e-6, "re-weighting had no effect inside the mask"
    assert torch.allclose(b.sum(-1), torch.ones_like(b.sum(-1)), atol=1e-5)
    # logits are multiplied before the softmax: check one pixel by hand
    q = attn.head_to_batch_dim(attn.to_q(hidden))
    k = attn.head_to_batch_dim(attn.to_k(cond))
    logits = (q @ k.transpose(1, 2)) * attn.scale
    logits[:, :, toks] *= 1.5
    heads = logits.shape[0] // 2
    want = logits.softmax(-1).view(2, heads, 256, -1).mean(1)
    assert torch.allclose(want[:, 0], b[:, 0], atol=1e-5)


def test_processor_runs_on_every_cross_attention_layer(sd):
    parts, z, cond, toks, w = _unet_inputs(sd)
    st = A.AttentionState(weight=w, tokens=toks, latent_size=(16, 16))
    with A.attention_processors(parts.unet, st, capture=lambda n: "up_blocks" in n), torch.no_grad():
        parts.unet(z, 500, encoder_hidden_states=cond)
    layers = A.cross_attention_layers(parts.unet)
    assert len(layers) >= 5 and set(st.calls) == set(layers)
    assert set(st.maps) == {n for n in layers if "up_blocks" in n}
    assert {m[0].shape[1] for m in st.maps.values()} == {64, 256}  # two resolutions captured


def test_reweighting_kwargs_survive_diffusers_filtering(sd):
    parts, z, cond, toks, w = _unet_inputs(sd)
    with torch.no_grad():
        plain = parts.unet(z, 500, encoder_hidden_states=cond).sample
        st = A.AttentionState(latent_size=(16, 16))
        with A.attention_processors(parts.unet, st):
            via_kwargs = parts.unet(z, 500, encoder_hidden_states=cond,
                                    cross_attention_kwargs={"anoplug_weight": w, "anoplug_tokens": toks}).sample
            st.weight, st.tokens = w, toks
            via_state = parts.unet(z, 500, encoder_hidden_states=cond).sample
        restored = parts.unet(z, 500, encoder_hidden_states=cond).sample
    assert (via_kwargs - plain).abs().max() > 1e-6, "cross_attention_kwargs did not reach the processor"
    assert torch.allclose(via_kwargs, via_state, atol=1e-6)
    assert torch.allclose(restored, plain, atol=1e-6), "original processors were not restored"


def test_unit_weight_is_identity_to_default_attention(sd):
    parts, z, cond, toks, _ = _unet_inputs(sd)
    with torch.no_grad():
        plain = parts.unet(z, 300, encoder_hidden_states=cond).sample
        with A.attention_processors(parts.unet, A.AttentionState(weight=torch.ones(2, 1, 16, 16), tokens=toks)):
            ours = parts.unet(z, 300, encoder_hidden_states=cond).sample
    assert torch.allclose(plain, ours, atol=1e-5)
    maps = torch.rand(1, 16, 5).softmax(-1)
    assert torch.allclose(A.pixel_softmax(maps).sum(-2), torch.ones(1, 5))


# -- textual inversion ---------------------------------------------------------------------------
def test_fixed_placeholder_rows_are_trained_and_base_untouched():
    pipe = tiny.tiny_sd_pipeline(seed=2)
    parts = Parts.from_pipeline(pipe).freeze()
    before = parts.text_encoder.get_input_embeddings().weight.detach().clone()
    emb = I.install_placeholders(parts.text_encoder, parts.tokenizer, ["<m0>", "<m1>"], "crack")
    assert parts.tokenizer.tokenize("<m0><m1>") == ["<m0>", "<m1>"]
    init = emb.learned.detach().clone()
    z = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    losses = I.train_embeddings(parts, z, ["a photo of <m0><m1>"] * 4, [emb.learned], steps=5, lr=2e-2, batch_size=2,
                                generator=torch.Generator().manual_seed(0))
    assert len(losses) == 5
    assert (emb.learned - init).abs().max() > 1e-4, "placeholder rows were not trained"
    assert torch.equal(emb.base.weight, before), "the frozen embedding table changed"
    with torch.no_grad():
        a = parts.encode_text(["a photo of <m0><m1>"])
        emb.learned.data.zero_()
        b = parts.encode_text(["a photo of <m0><m1>"])
    assert (a - b).abs().max() > 1e-5, "the prompt does not read the learned rows"


def test_injected_vectors_are_per_sample_and_carry_gradients():
    pipe = tiny.tiny_ldm_pipeline(seed=3)  # LDM-BERT: the AnomalyDiffusion family
    parts = Parts.from_pipeline(pipe).freeze()
    toks = ["<s0>", "<s1>"]
    emb = I.install_placeholders(parts.text_encoder, parts.tokenizer, toks, "anomaly")
    ids = parts.tokenizer.convert_tokens_to_ids(toks)
    encoder = torch.nn.Linear(3, 2 * 32)
    feats = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    vecs = encoder(feats).view(2, 2, 32)
    with emb.injected(vecs, ids):
        out = parts.encode_text(["a photo of <s0> <s1>"] * 2)
    assert (out[0] - out[1]).abs().max() > 1e-5, "same prompt, different injected vectors, same encoding"
    out.sum().backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    with torch.no_grad():
        plain = parts.encode_text(["a photo of <s0> <s1>"] * 2)
    assert torch.equal(plain[0], plain[1]), "injection leaked outside its context"


def test_masked_loss_ignores_outside_and_checkpoint_roundtrip(tmp_path):
    pipe = tiny.tiny_sd_pipeline(seed=4)
    parts = Parts.from_pipeline(pipe).freeze()
    emb = I.install_placeholders(parts.text_encoder, parts.tokenizer, ["<a0>"], "anomaly")
    init = emb.learned.detach().clone()
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    losses = I.train_embeddings(parts, z, ["<a0>"] * 2, [emb.learned], steps=3, lr=2e-2, batch_size=2,
                                generator=torch.Generator().manual_seed(0), loss_mask=torch.zeros(2, 1, 16, 16))
    assert losses == [0.0, 0.0, 0.0] and torch.equal(emb.learned.detach(), init)
    I.save_tensors(tmp_path / "ti.safetensors", {"learned": emb.learned})
    assert torch.equal(I.load_tensors(tmp_path / "ti.safetensors")["learned"], init)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        I.load_tensors(tmp_path / "nope.safetensors")
