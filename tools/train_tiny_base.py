"""Train the tiny offline base model: the CPU stand-in for Stable Diffusion / LDM.

A real latent text-to-image stack — AutoencoderKL (×4 down-sampling, 64 px → 16×16×4),
a text-conditioned UNet2DConditionModel, a CLIP text encoder and a locally written
tokenizer — trained from scratch on the embedded toy dataset (every category, normal
and defective images, with their captions). Stage 1 trains the VAE; stage 2 trains
the UNet and the text encoder together on the VAE's latents (captions dropped 10 % of the
time so classifier-free guidance works). Saved with ``save_pretrained`` (safetensors)
plus ``train_log.json`` (command, seed, loss curves, times).

    OMP_NUM_THREADS=1 python tools/train_tiny_base.py --out anoplug/assets/tiny_base

See docs/tiny_base_model.md for what the result is and is not.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def load_data(size: int, per_split: int, seed: int, test_per_category: int = 0):
    """Images [N,3,H,W] in [0,1] and captions of every toy category (train + test splits).

    ``test_per_category`` > 0 draws that many test images instead of ``per_split``: the test
    split cycles good, defect 1, defect 2, ..., so a longer test split is how the model sees
    enough defects to learn what "a hole" or "a scratch" looks like from its caption.
    """
    from anoplug.data.toy import CATEGORIES, ToyDataset

    images, captions = [], []
    for cat in CATEGORIES:
        for split in ("train", "test"):
            n = test_per_category if split == "test" and test_per_category > 0 else per_split
            ds = ToyDataset(cat, split, size=size, seed=seed, length=n)
            b = ds.batch(range(len(ds)))
            images.append(b.image)
            captions += list(b.text)
    return torch.cat(images), captions


def flip_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, lr: float, kl_weight: float, g: torch.Generator, log,
              crop: int = 0) -> list[float]:
    """L1 + MSE reconstruction with a tiny KL term; on random ``crop``-px crops (the VAE is convolutional) when > 0.

    AdamW + global-norm clipping at 1, run by :class:`anoplug.train.Trainer`; returns the
    reconstruction loss (without the KL term) of every step.
    """
    from anoplug.train import Trainer

    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)

    def step_fn(ctx) -> dict:
        x = flip_augment(images[torch.randint(0, len(images), (batch,), generator=ctx.generator)], ctx.generator) * 2 - 1
        if 0 < crop < x.shape[-1]:
            oy, ox = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=ctx.generator))
            x = x[..., oy:oy + crop, ox:ox + crop]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=ctx.generator)
        rec = vae.decode(z).sample
        loss_rec = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        return {"loss": loss_rec + kl_weight * post.kl().mean(), "rec": loss_rec.detach()}

    curve: list[float] = []

    def report(done: int, total: int, row: dict) -> None:
        curve.append(row["rec"])
        if (done - 1) % 50 == 0 or done == total:
            log(f"vae step {done - 1} rec {sum(curve[-50:]) / len(curve[-50:]):.4f}")

    Trainer({"vae": vae}, {"vae": opt}, step_fn, steps=steps, generator=g, clip_grad_norm=1.0, progress=report,
            desc="vae").fit()
    return curve


class EMA:
    """Exponential moving average of parameters with a warm-up: the usual way diffusion models are sampled.

    Kept here rather than the Trainer's ``ema=`` (a plain ``AveragedModel``, whose first update
    copies the weights and whose decay is constant): the shipped v2 model was made with this
    warm-up, ``min(decay, (1 + step) / (10 + step))`` from the initial weights, and the port keeps
    its recipe bit for bit. It is updated after each optimiser update by the Trainer's callback.
    """

    def __init__(self, modules, decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up, so early weights do not dominate
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        save_file({f"{i:05d}": s.contiguous() for i, s in enumerate(self.shadow)}, str(directory / "ema.safetensors"))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        stored = load_file(str(directory / "ema.safetensors"))
        with torch.no_grad():
            for i, s in enumerate(self.shadow):
                s.copy_(stored[f"{i:05d}"])


def lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 5 % of the steps, then cosine from 1 to 0.1 (a ``LambdaLR`` factor)."""
    warm = max(1, steps // 20)
    return min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.14159)).item()))


def train_unet(unet, text_encoder, tokenizer, latents: torch.Tensor, captions: list[str], steps: int, batch: int,
               lr: float, drop: float, g: torch.Generator, log, ema_decay: float = 0.0, checkpoint_dir: Path | None = None,
               checkpoint_every: int = 1000, resume_from: Path | None = None) -> list[float]:
    """ε-prediction MSE for the UNet and the text encoder together (one AdamW, clipping at 1), on Trainer.

    Captions are replaced by the empty one with probability ``drop`` (classifier-free guidance).
    Every ``checkpoint_every`` steps a Trainer checkpoint (raw weights with ``save_pretrained``,
    the EMA, every optimiser/scheduler/RNG state) goes to ``checkpoint_dir/step-NNNNNN``, so an
    interrupted run leaves a usable model and ``resume_from`` continues it to the same weights.
    """
    from anoplug.diffusion.loading import make_scheduler
    from anoplug.train import Trainer

    sched = make_scheduler("ddpm")
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps))
    n_ctx = int(tokenizer.model_max_length)
    ids_all = tokenizer(captions, padding="max_length", max_length=n_ctx, truncation=True, return_tensors="pt").input_ids
    ids_empty = tokenizer([""], padding="max_length", max_length=n_ctx, return_tensors="pt").input_ids
    ema = EMA([unet, text_encoder], ema_decay) if ema_decay > 0 else None

    def step_fn(ctx) -> torch.Tensor:
        g = ctx.generator
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        z0 = flip_augment(latents[idx], g)
        ids = ids_all[idx].clone()
        ids[torch.rand(batch, generator=g) < drop] = ids_empty
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        x_t = sched.add_noise(z0, noise, t)
        return F.mse_loss(unet(x_t, t, encoder_hidden_states=text_encoder(ids)[0]).sample, noise)

    def report(done: int, total: int, row: dict) -> None:
        if ema is not None:
            ema.update(done - 1)
        if (done - 1) % 100 == 0 or done == total:
            last = [r["loss"] for r in trainer.history[-100:]]  # a resumed run's history starts with the checkpoint's
            log(f"unet step {done - 1} loss {sum(last) / len(last):.4f}")
        if checkpoint_dir is not None and checkpoint_every and done % checkpoint_every == 0 and done < total:
            log(f"checkpoint at step {done} in {checkpoint_dir}")

    def save_weights(d: Path) -> None:
        unet.save_pretrained(str(d / "unet"), safe_serialization=True)
        text_encoder.save_pretrained(str(d / "text_encoder"), safe_serialization=True)
        if ema is not None:
            ema.save(d)

    def load_weights(d: Path) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        with torch.no_grad():
            unet.load_state_dict(UNet2DConditionModel.from_pretrained(str(d / "unet"), local_files_only=True).state_dict())
            text_encoder.load_state_dict(CLIPTextModel.from_pretrained(str(d / "text_encoder"),
                                                                       local_files_only=True).state_dict())
        if ema is not None:
            ema.load(d)

    trainer = Trainer({"unet": unet, "text_encoder": text_encoder}, {"unet+text": opt}, step_fn, steps=steps, generator=g,
                      schedulers={"unet+text": lr_sched}, clip_grad_norm=1.0, progress=report, desc="unet",
                      checkpoint_every=checkpoint_every if checkpoint_dir is not None else 0, checkpoint_dir=checkpoint_dir,
                      save_weights=save_weights, load_weights=load_weights,
                      meta={"lr": lr, "batch": batch, "drop": drop, "ema": ema_decay})
    history = trainer.fit(resume_from=resume_from)
    if ema is not None:
        ema.copy_to_model()
    return [row["loss"] for row in history]


@torch.no_grad()
def sample_grid(model_dir: str, path: str, seed: int = 0, steps: int = 50, guidance: float = 3.0) -> None:
    """Rows: toy categories; columns: 2 real images, 4 samples for the normal caption, 2 for a defect caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anoplug.data.toy import CATEGORIES, ToyDataset
    from anoplug.diffusion.tiny import load_tiny_base

    pipe = load_tiny_base(model_dir)
    cats = list(CATEGORIES)
    fig, axes = plt.subplots(len(cats), 8, figsize=(8 * 1.1, len(cats) * 1.2))
    for r, cat in enumerate(cats):
        real = ToyDataset(cat, "train", size=64, seed=seed, length=2).batch([0, 1])
        test = ToyDataset(cat, "test", size=64, seed=seed, length=8)
        defect = test.batch([i for i in range(len(test)) if test.label(i) != "good"][:1])
        prompts = [real.text[0]] * 4 + [defect.text[0]] * 2
        gens = [torch.Generator().manual_seed(seed * 1000 + r * 10 + k) for k in range(6)]
        out = pipe(prompts, num_inference_steps=steps, height=64, width=64, guidance_scale=guidance, generator=gens,
                   output_type="pt").images
        tiles = [*real.image, *out]
        for c, im in enumerate(tiles):
            ax = axes[r, c]
            ax.imshow(im.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(cat, fontsize=7)
            if r == 0:
                ax.set_title(["real", "real", "generated", "generated", "generated", "generated", "defect prompt",
                              "defect prompt"][c], fontsize=7)
        axes[r, 6].set_xlabel(defect.label[0], fontsize=6)
    fig.suptitle(f"tiny base model: real toy images vs samples (DDIM {steps} steps, CFG {guidance}, seed {seed})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def loss_plot(model_dir: str, path: str) -> None:
    """The VAE and UNet loss curves stored in ``train_log.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = json.loads((Path(model_dir) / "train_log.json").read_text())
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    for ax, key, every, title in ((axes[0], "vae_rec_loss_per_50", 50, "VAE reconstruction (L1 + MSE)"),
                                  (axes[1], "unet_loss_per_100", 100, "UNet ε-MSE")):
        ys = rec[key]
        ax.plot([every * (i + 1) for i in range(len(ys))], ys)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="anoplug/assets/tiny_base")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-split", type=int, default=48, help="images per category and split")
    ap.add_argument("--test-per-category", type=int, default=0,
                    help="test images (good and every defect type in turn) per category; 0 = --per-split")
    ap.add_argument("--vae-from", default="", help="reuse the VAE of this model directory instead of training one")
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--vae-crop", type=int, default=32, help="train the VAE on random crops of this size (0 = full)")
    ap.add_argument("--vae-batch", type=int, default=8)
    ap.add_argument("--vae-channels", default="16,32,32")
    ap.add_argument("--unet-steps", type=int, default=1400)
    ap.add_argument("--unet-batch", type=int, default=16)
    ap.add_argument("--unet-channels", default="32,64,64")
    ap.add_argument("--unet-lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.0, help="EMA decay of UNet + text-encoder weights (0 = off)")
    ap.add_argument("--first-attn-level", type=int, default=1, help="UNet levels above this have no attention")
    ap.add_argument("--text-hidden", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32, help="text context length")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint-every", type=int, default=1000,
                    help="UNet-stage Trainer checkpoint every K steps into <out>_partial/step-NNNNNN (0 = none)")
    ap.add_argument("--resume-from", default="", help="continue the UNet stage from such a checkpoint directory")
    ap.add_argument("--grid", default="", help="only write a sample grid (PNG) of the model in --out to this path")
    ap.add_argument("--loss-plot", default="", help="only plot the loss curves of the model in --out to this path")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.grid or args.loss_plot:
        if args.grid:
            sample_grid(args.out, args.grid, seed=args.seed)
        if args.loss_plot:
            loss_plot(args.out, args.loss_plot)
        return 0

    from diffusers import StableDiffusionPipeline

    from anoplug.diffusion import tiny
    from anoplug.diffusion.loading import make_scheduler

    out = Path(args.out)
    t_start = time.time()
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.time() - t_start:7.1f}s] {msg}"
        log_lines.append(line)
        print(line, flush=True)

    g = torch.Generator().manual_seed(args.seed)
    images, captions = load_data(args.size, args.per_split, args.seed, args.test_per_category)
    words = sorted({w for c in captions for w in re.findall(r"[a-z]+", c.lower())} | set(tiny.WORDS))
    log(f"data: {len(images)} images, {len(set(captions))} distinct captions, {len(words)} vocabulary words")

    t0 = time.time()
    if args.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae", local_files_only=True).eval()
        vae_curve = json.loads((Path(args.vae_from) / "train_log.json").read_text())["vae_rec_loss_per_50"]
        vae_curve = [v for v in vae_curve for _ in range(50)]  # back to per-step for the log format
        log(f"vae reused from {args.vae_from}")
    else:
        vae = tiny.tiny_vae(block_out_channels=tuple(int(c) for c in args.vae_channels.split(",")), norm_num_groups=8,
                            seed=args.seed)
        vae_curve = train_vae(vae, images, args.vae_steps, args.vae_batch, 2e-3, 1e-6, g, log, crop=args.vae_crop)
    vae_time = time.time() - t0
    with torch.no_grad():
        mean = torch.cat([vae.encode(images[i:i + 64] * 2 - 1).latent_dist.mean for i in range(0, len(images), 64)])
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = mean * scaling
    log(f"vae done in {vae_time:.0f}s; latent scaling factor {scaling:.4f}")

    out.mkdir(parents=True, exist_ok=True)
    tok_dir = tiny.write_clip_tokenizer(out / "_tok_src", words)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True, model_max_length=args.max_tokens)
    longest = max(len(tokenizer(c).input_ids) for c in set(captions))
    log(f"longest caption: {longest} tokens (context {args.max_tokens})")
    text_encoder = tiny.tiny_text_encoder(tokenizer, hidden=args.text_hidden, layers=2, heads=4, seed=args.seed)
    ch = tuple(int(c) for c in args.unet_channels.split(","))
    unet = tiny.tiny_unet(sample_size=args.size // 4, block_out_channels=ch, cross_attention_dim=args.text_hidden,
                          attention_head_dim=8, first_attn_level=args.first_attn_level, seed=args.seed)
    t0 = time.time()
    ckpt_dir = out.parent / (out.name + "_partial")
    unet_curve = train_unet(unet, text_encoder, tokenizer, latents, captions, args.unet_steps, args.unet_batch,
                            args.unet_lr, 0.1, g, log, ema_decay=args.ema, checkpoint_dir=ckpt_dir,
                            checkpoint_every=args.checkpoint_every,
                            resume_from=Path(args.resume_from) if args.resume_from else None)
    unet_time = time.time() - t0
    log(f"unet done in {unet_time:.0f}s")

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    for p in sorted((out / "_tok_src").iterdir()):
        p.unlink()
    (out / "_tok_src").rmdir()
    every = lambda c, k: [round(sum(c[i:i + k]) / len(c[i:i + k]), 5) for i in range(0, len(c), k)]
    record = {
        "command": "OMP_NUM_THREADS=1 python tools/train_tiny_base.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args), "seed": args.seed, "n_images": len(images), "torch": torch.__version__,
        "vae_seconds": round(vae_time, 1), "unet_seconds": round(unet_time, 1),
        "total_seconds": round(time.time() - t_start, 1), "latent_scaling_factor": scaling,
        "vae_rec_loss_per_50": every(vae_curve, 50), "unet_loss_per_100": every(unet_curve, 100),
        "final_vae_rec_loss": every(vae_curve, 50)[-1], "final_unet_loss": every(unet_curve, 100)[-1],
        "params": {"vae": sum(p.numel() for p in vae.parameters()), "unet": sum(p.numel() for p in unet.parameters()),
                   "text_encoder": sum(p.numel() for p in text_encoder.parameters())},
        "log": log_lines,
    }
    (out / "train_log.json").write_text(json.dumps(record, indent=1))
    log(f"saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
