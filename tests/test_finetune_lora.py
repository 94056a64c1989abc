"""LoRA fine-tuning (anoplug.diffusion.finetune.lora) on the committed tiny base.

Each test fails when its mechanism is removed: the adapter learns (held-out loss falls), sits
exactly on the target projections and is the only thing that moves, and its diffusers-format
file loads through diffusers' own ``load_lora_weights`` into a plain pipeline with the same
outputs (``lora_alpha`` included).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from anoplug.diffusion.finetune import common as C  # noqa: E402
from anoplug.diffusion.finetune import lora as L  # noqa: E402
from anoplug.diffusion.loading import load_pipeline  # noqa: E402
from tests.finetune_data import checkerboard, fresh_parts  # noqa: E402

PROMPT = "a photo of sks nut"




def base_name(name: str) -> str:
    return name.replace(".base_layer", "")


@pytest.fixture(scope="module")
def base():
    return load_pipeline("tiny-base")


@pytest.fixture(scope="module")
def trained(base):
    """One short LoRA run on UNet + text encoder, with snapshots before and after adding the adapter."""
    parts = fresh_parts(base)
    z = C.encode_latents(parts, checkerboard())
    frozen = {k: {n: t.detach().clone() for n, t in m.state_dict().items()}
              for k, m in (("unet", parts.unet), ("text_encoder", parts.text_encoder), ("vae", parts.vae))}
    with torch.no_grad():
        cond = parts.encode_text([PROMPT] * 2)
    before = C.heldout_loss(parts.unet, parts.scheduler, z, cond, repeats=8)
    L.add_lora(parts, text_encoder=True)
    init = {k: {n: p.detach().clone() for n, p in L.lora_parameters(m).items()}
            for k, m in (("unet", parts.unet), ("text_encoder", parts.text_encoder))}
    history = L.train_lora(parts, z, [PROMPT] * 2, steps=10, lr=1e-2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = parts.encode_text([PROMPT] * 2)
    after = C.heldout_loss(parts.unet, parts.scheduler, z, cond, repeats=8)
    return {"parts": parts, "frozen": frozen, "init": init, "history": history, "before": before, "after": after, "z": z}


def test_lora_training_lowers_the_heldout_loss(trained):
    assert len(trained["history"]) == 10 and all("loss" in r for r in trained["history"])
    assert trained["after"] < 0.7 * trained["before"], (trained["before"], trained["after"])


def test_only_the_lora_matrices_change(trained):
    parts = trained["parts"]
    for key, module in (("unet", parts.unet), ("text_encoder", parts.text_encoder), ("vae", parts.vae)):
        live = {base_name(n): t for n, t in module.state_dict().items() if "lora_" not in n}
        assert set(live) == set(trained["frozen"][key]), f"{key}: the base weights were renamed or dropped"
        changed = [n for n, t in live.items() if not torch.equal(t, trained["frozen"][key][n])]
        assert not changed, f"{key}: base weights changed: {changed[:3]}"
    for key in ("unet", "text_encoder"):
        lora = L.lora_parameters(getattr(parts, key))
        assert lora, f"no LoRA on the {key}"
        same = [n for n, p in lora.items() if torch.equal(p.detach(), trained["init"][key][n])]
        assert not same, f"{key}: LoRA matrices did not train: {same[:3]}"


def test_adapters_sit_exactly_on_the_attention_projections(trained):
    parts = trained["parts"]
    for module, targets in ((parts.unet, L.UNET_TARGETS), (parts.text_encoder, L.TEXT_ENCODER_TARGETS)):
        adapted = {n for n, m in module.named_modules() if hasattr(m, "lora_A")}
        wanted = {n for n, _ in module.named_modules()  # every self-/cross-attention projection, nothing else
                  if any(n.endswith(("attn1." + t, "attn2." + t, "self_attn." + t)) for t in targets)}
        assert adapted == wanted and adapted, (sorted(adapted - wanted)[:3], sorted(wanted - adapted)[:3])
        # rank 4 on every adapted Linear: r·(in + out) trainable numbers each
        n_expected = sum(L.RANK * (m.base_layer.in_features + m.base_layer.out_features)
                         for n, m in module.named_modules() if n in adapted)
        assert sum(p.numel() for p in L.lora_parameters(module).values()) == n_expected
    counts = L.parameter_counts(parts)
    assert counts["lora"] < 0.02 * counts["full_unet_and_text_encoder"]


def _unet_out(unet, z, cond):
    with torch.no_grad():
        return unet(z, torch.tensor([300, 700]), encoder_hidden_states=cond).sample


def test_diffusers_format_loads_through_load_lora_weights(trained, base, tmp_path):
    parts = trained["parts"]
    path = L.save_lora(tmp_path, parts)
    assert path.name == "pytorch_lora_weights.safetensors" and path.is_file()
    fresh = load_pipeline("tiny-base")
    fresh.load_lora_weights(str(tmp_path))  # diffusers' own loader, into a plain pipeline
    ids = parts.tokenize([PROMPT, "a normal hex nut without defects"])
    with torch.no_grad():
        ours, theirs, plain = parts.text_encoder(ids)[0], fresh.text_encoder(ids)[0], base.text_encoder(ids)[0]
    assert torch.allclose(ours, theirs, atol=1e-6), "the text-encoder LoRA did not load"
    assert (ours - plain).abs().max() > 1e-4, "the text-encoder LoRA has no effect"
    z = torch.randn(trained["z"].shape, generator=torch.Generator().manual_seed(5))
    a, b, c = _unet_out(parts.unet, z, ours), _unet_out(fresh.unet, z, ours), _unet_out(base.unet, z, ours)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert (a - c).abs().max() > 1e-3, "the loaded LoRA does not change the UNet"


def test_alpha_other_than_rank_survives_the_diffusers_round_trip(base, tmp_path):
    parts = fresh_parts(base)
    L.add_lora(parts, rank=2, alpha=8.0)  # scale alpha/r = 4: lost if the config is not saved with the weights
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in L.lora_parameters(parts.unet).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    L.save_lora(tmp_path, parts)
    fresh = load_pipeline("tiny-base")
    fresh.load_lora_weights(str(tmp_path))
    cond = parts.encode_text([PROMPT] * 2).detach()
    z = torch.randn(2, 4, 16, 16, generator=g)
    assert torch.allclose(_unet_out(parts.unet, z, cond), _unet_out(fresh.unet, z, cond), atol=1e-5)
    with pytest.raises(ValueError, match="no LoRA"):
        L.save_lora(tmp_path / "none", fresh_parts(base))
