"""The committed tiny base model: loads offline, is small, and its text conditioning works."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from anoplug.diffusion.loading import Parts, load_pipeline  # noqa: E402
from anoplug.diffusion.tiny import TINY_BASE_DIR, load_tiny_base  # noqa: E402
from anoplug.testing import block_network  # noqa: E402

pytestmark = pytest.mark.skipif(not (TINY_BASE_DIR / "model_index.json").is_file(), reason="tiny base model not built")


@pytest.fixture(scope="module")
def pipe():
    with block_network():
        return load_tiny_base()


def test_assets_are_small_safetensors_with_a_training_record():
    files = [p for p in TINY_BASE_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    log = json.loads((TINY_BASE_DIR / "train_log.json").read_text())
    assert log["command"].startswith("OMP_NUM_THREADS=1 python tools/train_tiny_base.py")
    assert log["unet_loss_per_100"][-1] < log["unet_loss_per_100"][0]


def test_loads_offline_with_its_local_tokenizer(pipe):
    assert len(pipe.tokenizer) > 300 and pipe.tokenizer.tokenize("a normal hex nut") == ["a</w>", "normal</w>", "hex</w>",
                                                                                          "nut</w>"]
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.steps_offset == 1
    with block_network():
        again = load_pipeline("tiny-base")
    assert type(again).__name__ == "StableDiffusionPipeline"


def test_vae_reconstructs_toy_images(pipe):
    from anoplug.data.toy import ToyDataset

    parts = Parts.from_pipeline(pipe)
    x = ToyDataset("capsule", "train", size=64).batch([0, 1]).image
    with torch.no_grad():
        rec = parts.decode(parts.encode_image(x))
    assert float((rec - x).abs().mean()) < 0.08


def test_captions_steer_the_samples(pipe):
    """The wood caption gives orange-brown samples (R − B high), the woven-fabric caption grey ones, same noise."""
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]
    kw = dict(num_inference_steps=15, height=64, width=64, guidance_scale=3.0, output_type="pt")
    with torch.no_grad():
        wood = pipe(["a normal wood grain without defects"] * 4, generator=gens(), **kw).images
        fabric = pipe(["a normal woven fabric without defects"] * 4, generator=gens(), **kw).images
    orange = lambda x: float((x[:, 0] - x[:, 2]).mean())
    assert orange(wood) > orange(fabric) + 0.1


def test_defect_captions_draw_the_defect(pipe):
    """The model learnt a defect from its caption: "a ragged hole in brushed metal" gives near-black holes.

    Same 8 noise seeds, DDIM 25, CFG 5: most hole-prompt samples have near-black pixels (real toy
    holes are black on grey metal), the normal-metal prompt gives (almost) none. Measured when
    the model was trained: 5 of 8 against 0 of 8.
    """
    kw = dict(num_inference_steps=25, height=64, width=64, guidance_scale=5.0, output_type="pt")

    def with_black_pixels(prompt: str) -> int:
        gens = [torch.Generator().manual_seed(i) for i in range(8)]
        with torch.no_grad():
            x = pipe([prompt] * 8, generator=gens, **kw).images
        lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        return int(((lum < 0.12).float().mean((1, 2)) > 0.002).sum())

    assert with_black_pixels("a ragged hole in brushed metal") >= 4
    assert with_black_pixels("a normal brushed metal without defects") <= 1
