"""Train the tiny offline *inpainting* base: the CPU stand-in for Stable Diffusion inpainting.

SD-inpainting's recipe at toy scale. The UNet takes 9 input channels — the noisy latent (4),
the mask down-sampled to the latent grid (1) and the latent of the masked image (4), in that
order, as diffusers' ``StableDiffusionInpaintPipeline`` feeds them — and starts from the tiny
text-to-image base (``anoplug/assets/tiny_base``) with the 5 new input channels of ``conv_in``
zero-initialised, as SD-inpainting started from SD. The VAE, text encoder and tokenizer are the
tiny base's, frozen. It trains on toy images of every category (normal and defective, with
their captions) under random masks: rectangles, brush strokes, the image's own defect mask
(so a defect caption learns to paint that defect into a hole) and sometimes the whole image
(plain text-to-image). The masked image is ``image * (1 - mask)`` in [-1, 1] (masked pixels
grey), as the pipeline builds it; captions are dropped 10 % of the time for classifier-free
guidance. One seeded generator draws every batch, mask, timestep and noise; the loop is
:class:`anoplug.train.Trainer`.

Two changes for a budget of ~1500 CPU steps instead of SD-inpainting's 440 k: the whole image
is masked 10 % of the time, not 25 % (such a sample teaches nothing about the new channels),
and ``conv_in`` — whose 5 new input channels start at zero — learns at 10× the learning rate,
so those channels grow within the short run (a 150-step pilot: ε-MSE outside the mask 0.063
at 10× against 0.069 at 1×).

    OMP_NUM_THREADS=1 nice -n 10 python tools/train_tiny_inpaint.py --out anoplug/assets/tiny_inpaint

Only ``unet/``, ``scheduler/`` and ``model_index.json`` are written (plus ``train_log.json``):
the other components are the tiny base's, and ``anoplug.diffusion.loading.load_tiny_inpaint``
assembles the pipeline from both directories. See docs/zoo.md, "Tiny inpainting base".
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny_base import EMA, lr_factor  # noqa: E402  (the base model's EMA warm-up and LR schedule)

BASE = Path(__file__).resolve().parent.parent / "anoplug" / "assets" / "tiny_base"


def load_data(size: int, per_split: int, test_per_category: int, seed: int):
    """Images [N,3,H,W] in [0,1], their defect masks [N,1,H,W] and captions, every toy category and split."""
    from anoplug.data.toy import CATEGORIES, ToyDataset

    images, masks, captions = [], [], []
    for cat in CATEGORIES:
        for split, n in (("train", per_split), ("test", test_per_category)):
            b = ToyDataset(cat, split, size=size, seed=seed, length=n).batch(range(n))
            images.append(b.image)
            masks.append(b.mask)
            captions += list(b.text)
    return torch.cat(images), torch.cat(masks), captions


# -- masks: SD-inpainting / LaMa style ----------------------------------------------------------
def box_mask(size: int, g: torch.Generator, max_boxes: int = 3) -> torch.Tensor:
    """1..max_boxes axis-aligned rectangles, each side 10-50 % of the image, anywhere. [1,H,W] in {0,1}."""
    m = torch.zeros(1, size, size)
    for _ in range(int(torch.randint(1, max_boxes + 1, (1,), generator=g))):
        h, w = (int(v) for v in torch.randint(size // 10, size // 2 + 1, (2,), generator=g))
        y, x = int(torch.randint(0, size - h + 1, (1,), generator=g)), int(torch.randint(0, size - w + 1, (1,), generator=g))
        m[:, y:y + h, x:x + w] = 1
    return m


def stroke_mask(size: int, g: torch.Generator, max_strokes: int = 3, max_vertices: int = 6) -> torch.Tensor:
    """Irregular thick brush strokes (LaMa's random polylines): each a random walk of 2..max_vertices
    segments, 10-30 % of the side long, 4-12 % wide. [1,H,W] in {0,1}."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    m = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(int(torch.randint(1, max_strokes + 1, (1,), generator=g))):
        p = torch.rand(2, generator=g) * size
        radius = float(size * (0.02 + 0.04 * torch.rand(1, generator=g)))
        for _ in range(int(torch.randint(2, max_vertices + 1, (1,), generator=g))):
            angle = float(torch.rand(1, generator=g)) * 2 * math.pi
            length = size * (0.1 + 0.2 * float(torch.rand(1, generator=g)))
            q = (p + length * torch.tensor([math.sin(angle), math.cos(angle)])).clamp(0, size - 1)
            d = q - p  # distance of every pixel to the segment p-q
            s = (((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / d.pow(2).sum().clamp_min(1e-6)).clamp(0, 1)
            m |= (yy - p[0] - s * d[0]).pow(2) + (xx - p[1] - s * d[1]).pow(2) <= radius ** 2
            p = q
    return m[None].float()


def defect_mask(mask: torch.Tensor, dilate: int = 2) -> torch.Tensor:
    """The toy defect's own mask, grown by ``dilate`` pixels so the hole covers the defect's rim."""
    return F.max_pool2d(mask[None], 2 * dilate + 1, stride=1, padding=dilate)[0]


def draw_masks(defects: torch.Tensor, g: torch.Generator, p_full: float, p_defect: float) -> torch.Tensor:
    """One training mask per image: the whole image with ``p_full``; else, for an image with a defect,
    its own (dilated) defect mask with ``p_defect``; else a box or a brush-stroke mask, half and half."""
    size = defects.shape[-1]
    out = []
    for dm in defects:
        u = torch.rand(3, generator=g)
        if u[0] < p_full:
            out.append(torch.ones(1, size, size))
        elif dm.any() and u[1] < p_defect:
            out.append(defect_mask(dm))
        elif u[2] < 0.5:
            out.append(box_mask(size, g))
        else:
            out.append(stroke_mask(size, g))
    return torch.stack(out)


# -- the model ----------------------------------------------------------------------------------
def inpainting_unet_from(unet):
    """The same UNet with a 9-channel ``conv_in``: the base's weights on the first 4 channels, zeros on
    the mask and masked-image channels (SD-inpainting's initialisation), so it starts as the base."""
    from diffusers import UNet2DConditionModel

    from anoplug.diffusion.tiny import seeded

    with seeded(0):  # the throw-away init is overwritten below; it must not draw from the global RNG
        new = UNet2DConditionModel.from_config({**unet.config, "in_channels": 9})
    state = unet.state_dict()
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, torch.zeros(w.shape[0], 5, *w.shape[2:], dtype=w.dtype)], 1)
    new.load_state_dict(state)
    return new


def train(unet, vae, cond_all: torch.Tensor, cond_empty: torch.Tensor, images: torch.Tensor, defects: torch.Tensor,
          *, steps: int, batch: int, lr: float, drop: float, p_full: float, p_defect: float, ema_decay: float,
          g: torch.Generator, log, conv_in_lr_mult: float = 1.0) -> list[dict]:
    """ε-MSE on the whole latent of ``unet(cat[x_t, mask↓, E(masked image)])``; only the UNet learns."""
    from anoplug.diffusion.loading import make_scheduler
    from anoplug.train import Trainer

    sched = make_scheduler("ddpm")
    scale = float(vae.config.scaling_factor)
    conv_in = list(unet.conv_in.parameters())
    rest = [p for p in unet.parameters() if all(p is not q for q in conv_in)]
    opt = torch.optim.AdamW([{"params": rest}, {"params": conv_in, "lr": lr * conv_in_lr_mult}], lr=lr,
                            weight_decay=1e-4)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps))
    ema = EMA([unet], ema_decay) if ema_decay > 0 else None

    def step_fn(ctx) -> dict:
        g = ctx.generator
        idx = torch.randint(0, len(images), (batch,), generator=g)
        flip = torch.rand(batch, generator=g) < 0.5  # the same flip for the image and its defect mask
        x = torch.where(flip[:, None, None, None], images[idx].flip(-1), images[idx]) * 2 - 1
        dm = torch.where(flip[:, None, None, None], defects[idx].flip(-1), defects[idx])
        mask = draw_masks(dm, g, p_full, p_defect)
        with torch.no_grad():
            post = vae.encode(torch.cat([x, x * (1 - mask)])).latent_dist
            z0 = post.mean[:batch] * scale
            masked = (post.mean[batch:] + post.std[batch:] * torch.randn(z0.shape, generator=g)) * scale
        mask_lat = F.interpolate(mask, size=z0.shape[-2:])  # nearest, as the pipeline resizes it
        cond = torch.where((torch.rand(batch, generator=g) < drop)[:, None, None], cond_empty, cond_all[idx])
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        x_t = sched.add_noise(z0, noise, t)
        pred = unet(torch.cat([x_t, mask_lat, masked], 1), t, encoder_hidden_states=cond).sample
        inside = mask_lat.expand_as(noise)
        sq = (pred - noise).pow(2)
        err = sq.detach()
        return {"loss": sq.mean(), "loss_in_mask": float((err * inside).sum() / inside.sum().clamp_min(1)),
                "loss_outside": float((err * (1 - inside)).sum() / (1 - inside).sum().clamp_min(1)),
                "mask_fraction": float(mask.mean())}

    t0 = time.time()

    def report(done: int, total: int, row: dict) -> None:
        if ema is not None:
            ema.update(done - 1)
        if (done - 1) % 50 == 0 or done == total:
            last = trainer.history[-50:]
            mean = lambda k: sum(r[k] for r in last) / len(last)
            log(f"step {done - 1} loss {mean('loss'):.4f} outside the mask {mean('loss_outside'):.4f} "
                f"({(time.time() - t0) / done:.2f} s/step)")

    trainer = Trainer({"unet": unet}, {"unet": opt}, step_fn, steps=steps, generator=g, schedulers={"unet": lr_sched},
                      clip_grad_norm=1.0, progress=report, desc="inpaint unet")
    history = trainer.fit()
    if ema is not None:
        ema.copy_to_model()
    return history


def save(out: Path, unet, vae, text_encoder, tokenizer) -> None:
    """Write the StableDiffusionInpaintPipeline layout, keeping only what is new: unet/, scheduler/, model_index.json."""
    from diffusers import StableDiffusionInpaintPipeline

    from anoplug.diffusion.loading import make_scheduler

    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("unet", "scheduler"):
            shutil.rmtree(out / name, ignore_errors=True)
            shutil.copytree(Path(tmp) / name, out / name)
        shutil.copy(Path(tmp) / "model_index.json", out / "model_index.json")


def loss_plot(model_dir: str, path: str) -> None:
    """The loss curves stored in ``train_log.json`` (whole latent, inside and outside the mask; means of 25 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = json.loads((Path(model_dir) / "train_log.json").read_text())
    every = rec["curve_every"]
    fig, ax = plt.subplots(figsize=(5.5, 3))
    for key, label in (("loss_per_25", "ε-MSE, whole latent"), ("loss_in_mask_per_25", "inside the mask"),
                       ("loss_outside_per_25", "outside the mask")):
        ys = rec[key]
        ax.plot([every * (i + 1) for i in range(len(ys))], ys, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(f"step (batch {rec['args']['batch']})")
    ax.set_title("tiny inpainting UNet (from tiny-base, 9 input channels)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@torch.no_grad()
def sample_grid(path: str, seed: int = 777) -> None:
    """Held-out toy images (seed 777, one defect image per category), a centred 24×24 hole, and the
    shipped model's inpainting: DDIM 10 without guidance and DDIM 30 with CFG 3, the images' own captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anoplug.data.toy import CATEGORIES, ToyDataset
    from anoplug.diffusion.loading import load_pipeline

    pipe = load_pipeline("tiny-inpaint")
    batches = [ToyDataset(c, "test", size=64, seed=seed, length=2).batch([1]) for c in CATEGORIES]
    src = torch.cat([b.image for b in batches])
    mask = torch.zeros(len(src), 1, 64, 64)
    mask[..., 20:44, 20:44] = 1
    kw = dict(image=src, mask_image=mask, height=64, width=64, output_type="pt")
    rows = {"source": src, "masked input": src * (1 - mask),
            "DDIM 10, CFG 1": pipe([t for b in batches for t in b.text], num_inference_steps=10, guidance_scale=1.0,
                                   generator=torch.Generator().manual_seed(0), **kw).images,
            "DDIM 30, CFG 3": pipe([t for b in batches for t in b.text], num_inference_steps=30, guidance_scale=3.0,
                                   generator=torch.Generator().manual_seed(0), **kw).images}
    fig, axes = plt.subplots(len(rows), len(src), figsize=(len(src) * 1.0, len(rows) * 1.1))
    for r, (name, ims) in enumerate(rows.items()):
        for c, im in enumerate(ims):
            ax = axes[r, c]
            ax.imshow(im.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=6)
            if r == 0:
                ax.set_title(list(CATEGORIES)[c], fontsize=7)
    fig.suptitle("tiny inpainting base on held-out toy images (seed 777), 24×24 hole, the images' captions", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="anoplug/assets/tiny_inpaint")
    ap.add_argument("--base", default=str(BASE), help="the tiny base: start UNet, frozen VAE / text encoder / tokenizer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-split", type=int, default=48, help="normal (train) images per category")
    ap.add_argument("--test-per-category", type=int, default=96, help="test images (good and each defect in turn)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--conv-in-lr-mult", type=float, default=10.0, help="learning-rate factor of conv_in")
    ap.add_argument("--ema", type=float, default=0.99, help="EMA decay (with warm-up) of the UNet (0 = off)")
    ap.add_argument("--p-full", type=float, default=0.1, help="probability of masking the whole image")
    ap.add_argument("--p-defect", type=float, default=0.5, help="probability of a defective image's own mask")
    ap.add_argument("--drop", type=float, default=0.1, help="caption dropout (classifier-free guidance)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loss-plot", default="", help="only plot the loss curve of the model in --out to this path")
    ap.add_argument("--grid", default="", help="only write a PNG of the shipped model's inpaintings to this path")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.loss_plot or args.grid:
        if args.loss_plot:
            loss_plot(args.out, args.loss_plot)
        if args.grid:
            sample_grid(args.grid)
        return 0

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    t_start = time.time()
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.time() - t_start:7.1f}s] {msg}"
        log_lines.append(line)
        print(line, flush=True)

    base = Path(args.base)
    vae = AutoencoderKL.from_pretrained(str(base), subfolder="vae", local_files_only=True).eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(str(base), subfolder="text_encoder", local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(base), subfolder="tokenizer", local_files_only=True)
    unet = inpainting_unet_from(UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", local_files_only=True))
    g = torch.Generator().manual_seed(args.seed)
    images, defects, captions = load_data(64, args.per_split, args.test_per_category, args.seed)
    n_ctx = int(tokenizer.model_max_length)
    with torch.no_grad():  # the text encoder is frozen: one embedding per caption, computed once
        ids = tokenizer(captions, padding="max_length", max_length=n_ctx, truncation=True, return_tensors="pt").input_ids
        cond_all = torch.cat([text_encoder(ids[i:i + 256])[0] for i in range(0, len(ids), 256)])
        cond_empty = text_encoder(tokenizer([""], padding="max_length", max_length=n_ctx, return_tensors="pt").input_ids)[0]
    log(f"data: {len(images)} images ({int((defects.flatten(1).amax(1) > 0).sum())} with a defect), "
        f"{len(set(captions))} captions; unet {sum(p.numel() for p in unet.parameters())} params")

    t0 = time.time()
    history = train(unet, vae, cond_all, cond_empty, images, defects, steps=args.steps, batch=args.batch, lr=args.lr,
                    drop=args.drop, p_full=args.p_full, p_defect=args.p_defect, ema_decay=args.ema, g=g, log=log,
                    conv_in_lr_mult=args.conv_in_lr_mult)
    train_time = time.time() - t0
    log(f"unet done in {train_time:.0f}s")
    out = Path(args.out)
    save(out, unet.eval(), vae, text_encoder, tokenizer)
    every = lambda k, n: [round(sum(r[k] for r in history[i:i + n]) / len(history[i:i + n]), 5)
                          for i in range(0, len(history), n)]
    record = {
        "command": "OMP_NUM_THREADS=1 nice -n 10 python tools/train_tiny_inpaint.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args), "seed": args.seed, "n_images": len(images), "torch": torch.__version__,
        "components_from": {"vae": "../tiny_base/vae", "text_encoder": "../tiny_base/text_encoder",
                            "tokenizer": "../tiny_base/tokenizer", "unet_init": "../tiny_base/unet (conv_in 4 -> 9 "
                                                                                 "channels, new ones zero)"},
        "train_seconds": round(train_time, 1), "total_seconds": round(time.time() - t_start, 1),
        "seconds_per_step": round(train_time / max(args.steps, 1), 3), "curve_every": 25,
        "loss_per_25": every("loss", 25), "loss_in_mask_per_25": every("loss_in_mask", 25),
        "loss_outside_per_25": every("loss_outside", 25),
        "mask_fraction_mean": round(sum(r["mask_fraction"] for r in history) / max(len(history), 1), 4),
        "final_loss": every("loss", 100)[-1] if history else None,
        "params": {"unet": sum(p.numel() for p in unet.parameters())},
        "log": log_lines,
    }
    (out / "train_log.json").write_text(json.dumps(record, indent=1))
    log(f"saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
