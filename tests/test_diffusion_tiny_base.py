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


def test_defect_captions_draw_the_defect_inside_a_mask(pipe):
    """The model learnt defects from their captions: a hole prompt, blended inside real hole masks, gives dark holes.

    Normal brushed-metal images, the masks of real toy holes, blended sampling ("before"), CFG 7:
    the pixels inside the masks get clearly darker than the normal metal there (real holes are
    near black). The same run with the normal caption stays as bright as the metal.
    """
    from anoplug.data.toy import ToyDataset
    from anoplug.diffusion.blend import blended_sample, finish

    parts = Parts.from_pipeline(pipe)
    test = ToyDataset("metal", "test", size=64, length=40, defects=["hole"])
    holes = test.batch([i for i in range(len(test)) if test.label(i) == "hole"][:6])
    normals = ToyDataset("metal", "train", size=64, length=6).batch(range(6))
    with torch.no_grad():
        z0 = parts.encode_image(normals.image)
        m = (torch.nn.functional.interpolate(holes.mask, size=z0.shape[-2:], mode="area") > 0).float()
        unc = parts.encode_text([""] * 6)

        def inside_mean(prompts: list[str]) -> float:
            cond = parts.encode_text(prompts)

            def denoise(x, t, i):
                eu, ec = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([unc, cond])).sample.chunk(2)
                return eu + 7.0 * (ec - eu)

            rngs = [torch.Generator().manual_seed(k) for k in range(6)]
            z = blended_sample(denoise, pipe.scheduler, z0, m, rngs=rngs, num_steps=25, eta=1.0, mode="before")
            img = finish(parts.decode(z), normals.image, holes.mask, paste=True)
            return float(img[holes.mask.bool().expand_as(img)].mean())

        normal_metal = float(normals.image[holes.mask.bool().expand_as(normals.image)].mean())
        with_hole = inside_mean(list(holes.text))
        without = inside_mean(["a normal brushed metal without defects"] * 6)
    assert with_hole < normal_metal - 0.08, (with_hole, normal_metal)
    assert abs(without - normal_metal) < 0.05, (without, normal_metal)
