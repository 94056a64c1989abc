"""Per-step training time of the conditioning fine-tunes (ControlNet, T2I-Adapter, IP-Adapter) on the tiny base, CPU.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_finetune_control.py`` (writes
``benchmarks/results/finetune_control_steps.json`` and ``.md``). The measurement is the one of
``bench_finetune.py`` (its ``StepClock``: the gap between two consecutive Trainer progress
callbacks, one full update; median over ``--steps`` after ``--warmup``, wall and CPU time),
and each ``bench_*`` here has the signature of that script's ``BENCHES`` entries, so they can
join them. Data: toy nuts at 64 px with their captions; hints are their Sobel edge maps (one
channel); the IP-Adapter's image prompt is the image itself through the frozen image encoder
(``ip_adapter.load_image_encoder()``: the committed tiny CLIP's vision tower, or the random
stand-in while that is absent — recorded in the results).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from bench_finetune import StepClock, fresh_parts

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_control_steps.json"


def _pairs(parts, n: int):
    """``n`` toy nuts, their captions, and their encodings with edge-map hints."""
    from anoplug.data.toy import ToyDataset
    from anoplug.diffusion.finetune.conditioned import encode_pairs
    from anoplug.diffusion.finetune.controlnet import edge_hint

    batch = ToyDataset("nut", "train", size=64, length=n).batch(range(n))
    return batch.image, batch.text, encode_pairs(parts, batch.image, batch.text, edge_hint(batch.image))


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def bench_controlnet(pipe, latents: torch.Tensor, *, steps: int, batch: int, clock: StepClock) -> dict:
    from anoplug.diffusion.finetune import controlnet as CN

    parts = fresh_parts(pipe)
    _, _, data = _pairs(parts, len(latents))
    net = CN.make_controlnet(parts.unet, vae_factor=parts.vae_factor, conditioning_channels=1)
    CN.train_controlnet(parts, net, data, steps=steps, batch_size=batch, generator=torch.Generator().manual_seed(0),
                        progress=clock)
    return {"trainable_params": _count(net), "full_params": sum(p.numel() for p in parts.unet.parameters()),
            "trainable_fraction": round(_count(net) / sum(p.numel() for p in parts.unet.parameters()), 5),
            "what_trains": "ControlNet: UNet encoder copy + hint embedding (16, 32, 96) + zero convs (AdamW)"}


def bench_t2i_adapter(pipe, latents: torch.Tensor, *, steps: int, batch: int, clock: StepClock) -> dict:
    from anoplug.diffusion.finetune import t2i_adapter as TA

    parts = fresh_parts(pipe)
    _, _, data = _pairs(parts, len(latents))
    adapter = TA.make_t2i_adapter(parts.unet, vae_factor=parts.vae_factor, in_channels=1)
    TA.train_t2i_adapter(parts, adapter, data, steps=steps, batch_size=batch, generator=torch.Generator().manual_seed(0),
                         progress=clock)
    return {"trainable_params": _count(adapter),
            "what_trains": "T2I-Adapter full_adapter, channels (32, 64, 128), 2 res blocks, ×4 unshuffle (Adam)"}


def bench_ip_adapter(pipe, latents: torch.Tensor, *, steps: int, batch: int, clock: StepClock) -> dict:
    from anoplug.diffusion.finetune import ip_adapter as IP
    from anoplug.zoo.clip import TINY_CLIP_DIR

    parts = fresh_parts(pipe)
    images, texts, _ = _pairs(parts, len(latents))
    encoder = IP.load_image_encoder()
    data = IP.encode_image_pairs(parts, encoder, images, texts)
    adapter = IP.install_ip_adapter(parts.unet, image_embed_dim=data.condition.shape[1])
    IP.train_ip_adapter(parts, adapter, data, steps=steps, batch_size=batch, generator=torch.Generator().manual_seed(0),
                        progress=clock)
    which = "tiny CLIP" if (TINY_CLIP_DIR / "model.safetensors").is_file() else "random tiny CLIP vision tower"
    return {"trainable_params": _count(adapter),
            "what_trains": f"IP-Adapter: image projection → 4 tokens + to_k_ip/to_v_ip of 10 cross-attention layers "
                           f"(AdamW; image encoder: {which}, frozen, run once before training)"}


#: mode -> its bench function (same signature as bench_finetune.BENCHES).
BENCHES: dict[str, Callable[..., dict]] = {
    "controlnet": bench_controlnet,
    "t2i_adapter": bench_t2i_adapter,
    "ip_adapter": bench_ip_adapter,
}


def main() -> int:
    """``bench_finetune``'s driver (same options and clock), over these modes and into this script's results file."""
    import bench_finetune

    bench_finetune.BENCHES, bench_finetune.RESULTS = BENCHES, RESULTS
    return bench_finetune.main()


if __name__ == "__main__":
    raise SystemExit(main())
