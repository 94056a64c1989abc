"""Train the tiny offline CLIP: a real ``transformers.CLIPModel``, contrastive on toy images and captions.

A ViT image tower (64 px, 8 px patches) and a causal text tower on the project's local
CLIP tokenizer (``anoplug.diffusion.tiny.tiny_tokenizer``), trained from scratch with
CLIP's symmetric InfoNCE and learned temperature (Radford et al. 2021) on the embedded toy
dataset: every category, normal and defective images, each with its one-sentence
caption. Two details differ from CLIP's web data and are handled openly:

- normal images of one category share one caption, so images with the *same caption
  string* are all positives for it (``anoplug.zoo.clip.contrastive_loss``);
- a caption is used bare or inside a CLIP prompt template ("a photo of {}", ...), chosen
  at random per sample, so that templated zero-shot prompts are in-distribution text.

Zero-shot accuracy is measured on held-out images (another dataset seed: different
renderings) at telling the category and the defect type within a category, and written
into ``train_log.json`` with the command, seed, loss curve and time.

    OMP_NUM_THREADS=2 nice -n 10 python tools/train_tiny_clip.py --out anoplug/assets/tiny_clip

See docs/zoo.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def render_set(size: int, per_category_train: int, per_category_test: int, seed: int,
               categories: list[str] | None = None):
    """uint8 images ``[N,3,H,W]``, captions, categories and labels of the toy categories (train + test splits)."""
    from anoplug.data.toy import CATEGORIES, ToyDataset

    images, captions, cats, labels = [], [], [], []
    for cat in categories or list(CATEGORIES):
        for split, n in (("train", per_category_train), ("test", per_category_test)):
            if n <= 0:
                continue
            b = ToyDataset(cat, split, size=size, seed=seed, length=n).batch(range(n))
            images.append((b.image * 255).round().to(torch.uint8))
            captions += list(b.text)
            cats += [cat] * n
            labels += list(b.label)
    return torch.cat(images), captions, cats, labels


def evaluate(model, tokenizer, images: torch.Tensor, cats: list[str], labels: list[str]) -> dict:
    """Zero-shot category accuracy (among the categories present) and defect-type accuracy within each category."""
    from anoplug.zoo.clip import toy_category_prompts, toy_defect_prompts, zero_shot

    present = list(dict.fromkeys(cats))
    x = images.float() / 255
    cat_res = zero_shot(model, tokenizer, x, toy_category_prompts(present))
    per_cat, chance = {}, {}
    for c in present:
        idx = [i for i, k in enumerate(cats) if k == c]
        res = zero_shot(model, tokenizer, x[idx], toy_defect_prompts(c))
        per_cat[c] = round(res.accuracy([labels[i] for i in idx]), 4)
        chance[c] = round(1 / len(res.classes), 4)
    return {"n_images": len(cats), "category_accuracy": round(cat_res.accuracy(cats), 4),
            "category_chance": round(1 / len(present), 4),
            "defect_accuracy_mean": round(float(np.mean(list(per_cat.values()))), 4),
            "defect_chance_mean": round(float(np.mean(list(chance.values()))), 4),
            "defect_accuracy_per_category": per_cat, "defect_chance_per_category": chance}


def train(model, tokenizer, images: torch.Tensor, captions: list[str], cats: list[str], *, steps: int, batch: int,
          lr: float, warmup: int, weight_decay: float, seed: int, categories_per_batch: int,
          scale_lr: float, log) -> list[dict]:
    """Symmetric InfoNCE on (image, caption) pairs with AdamW + cosine schedule, on ``anoplug.train.Trainer``.

    ``categories_per_batch`` > 0 draws each batch from that many random categories (equal
    shares): more same-category negatives, so the loss must tell defects apart, not only
    materials. 0 draws pairs uniformly, as CLIP does.
    """
    from anoplug.train import Trainer
    from anoplug.zoo.clip import TEMPLATES, ClipPreprocess, caption_groups, contrastive_loss, tokenize

    size = int(model.config.vision_config.image_size)
    prep = ClipPreprocess(size=size, crop=size)
    variants = [[c] + [t.format(c) for t in TEMPLATES] for c in captions]  # bare caption, then each template
    flat = [v for vs in variants for v in vs]
    enc = tokenize(tokenizer, flat)
    n_var = len(variants[0])
    ids = enc["input_ids"].view(len(captions), n_var, -1)
    mask = enc["attention_mask"].view(len(captions), n_var, -1)
    groups = caption_groups(captions)
    names = sorted(set(cats))
    members = [torch.tensor([i for i, c in enumerate(cats) if c == n]) for n in names]
    if categories_per_batch and batch % categories_per_batch:
        raise ValueError(f"batch {batch} is not a multiple of categories_per_batch {categories_per_batch}")
    flippable = torch.tensor([c != "tray" for c in cats])  # a tray's layout is its normality: never mirror it
    max_scale = math.log(100.0)

    named = [(n, p) for n, p in model.named_parameters() if n != "logit_scale"]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    # the temperature gets its own step size: at CLIP's shared lr it could move by only lr*steps in
    # log space, i.e. stay near its initial 1/0.07 in a run of a few hundred updates
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0},
                             {"params": [model.logit_scale], "weight_decay": 0.0, "lr": scale_lr or lr}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def step_fn(ctx) -> dict:
        g = ctx.generator
        with torch.no_grad():  # CLIP clips the temperature at 100
            model.logit_scale.clamp_(0, max_scale)
        if categories_per_batch:
            chosen = torch.randperm(len(names), generator=g)[:categories_per_batch].tolist()
            share = batch // categories_per_batch
            idx = torch.cat([members[k][torch.randint(0, len(members[k]), (share,), generator=g)] for k in chosen])
        else:
            idx = torch.randint(0, len(captions), (batch,), generator=g)
        var = torch.randint(0, n_var, (batch,), generator=g)
        flip = (torch.rand(batch, generator=g) < 0.5) & flippable[idx]
        x = images[idx].float() / 255
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        out = model(input_ids=ids[idx, var], attention_mask=mask[idx, var], pixel_values=prep(x))
        loss = contrastive_loss(out.logits_per_image, groups[idx])
        return {"loss": loss, "logit_scale": float(model.logit_scale.detach().exp())}

    t0 = time.time()

    def report(step: int, total: int, row: dict) -> None:
        if step % 100 == 0 or step == total or step == 10:
            log(f"step {step}/{total} loss {row['loss']:.4f} scale {row['logit_scale']:.1f} ({time.time() - t0:.0f} s)")

    trainer = Trainer({"clip": model}, {"clip": opt}, step_fn, steps=steps, generator=torch.Generator().manual_seed(seed),
                      schedulers={"clip": sched}, clip_grad_norm=1.0, progress=report, desc="tiny clip")
    history = trainer.fit()
    with torch.no_grad():
        model.logit_scale.clamp_(0, max_scale)
    return history


def plot_loss(record: dict, path: Path) -> None:
    """Loss (raw and smoothed) and logit scale per update, from a ``train_log.json`` record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anoplug.train.log import plot_history

    a = record["args"]
    history = [{"loss": v} for v in record["loss"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    plot_history(history, ("loss",), window=25, ax=ax)
    if a.get("categories_per_batch"):  # the plateau where categories are told apart but defects are not
        ax.axhline(math.log(a["batch"] / a["categories_per_batch"]), color="tab:red", linestyle=":", linewidth=1,
                   label=f"ln({a['batch'] // a['categories_per_batch']}): categories only")
    ax.set_ylabel("symmetric InfoNCE")
    ax2 = ax.twinx()
    ax2.plot(range(1, len(record["logit_scale"]) + 1), record["logit_scale"], color="grey", linestyle="--",
             linewidth=1, label="logit scale")
    ax2.set_ylabel("logit scale (exp)", color="grey")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.get_legend().remove()
    ax2.legend(h1 + h2, ["InfoNCE (raw; smoothed)" if x == "loss" else x for x in l1] + l2, loc="upper center",
               bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
    ax.set_title(f"tiny CLIP, seed {record['seed']}, batch {a['batch']}, {a['steps']} steps "
                 f"({record['train_seconds'] / 60:.1f} min CPU, {a['threads']} thread(s))", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="anoplug/assets/tiny_clip")
    ap.add_argument("--seed", type=int, default=0, help="model init, batch draws, templates, flips")
    ap.add_argument("--data-seed", type=int, default=0, help="toy dataset seed of the training images")
    ap.add_argument("--eval-seed", type=int, default=1, help="toy dataset seed of the held-out images (must differ)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-per-category", type=int, default=64, help="normal images per category (train split)")
    ap.add_argument("--test-per-category", type=int, default=480, help="test-split images per category (good + defects)")
    ap.add_argument("--eval-per-category", type=int, default=60, help="held-out images per category (multiple of 20)")
    ap.add_argument("--categories", default="", help="comma-separated toy categories (default: all ten)")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--categories-per-batch", type=int, default=4,
                    help="draw each batch from this many categories (0 = uniformly over all pairs)")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak AdamW rate (1e-3 collapses within-category)")
    ap.add_argument("--scale-lr", type=float, default=0.0, help="learning rate of the logit scale (0 = --lr)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--vision-width", type=int, default=96)
    ap.add_argument("--vision-layers", type=int, default=3)
    ap.add_argument("--text-width", type=int, default=64)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--projection-dim", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32, help="text context length")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--plot", default="docs/images/tiny_clip_loss.png", help="loss-curve PNG ('' = none)")
    ap.add_argument("--replot", action="store_true", help="only redraw --plot from <out>/train_log.json")
    args = ap.parse_args(argv)
    if args.replot:
        plot_loss(json.loads((Path(args.out) / "train_log.json").read_text()), Path(args.plot))
        return 0
    if args.eval_seed == args.data_seed:
        ap.error("--eval-seed must differ from --data-seed (held-out images)")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))

    from transformers import CLIPModel

    from anoplug.diffusion.tiny import seeded, tiny_tokenizer
    from anoplug.zoo.clip import ClipPreprocess, save_clip, tiny_clip_config

    def log(msg: str) -> None:
        print(f"[tiny clip] {msg}", flush=True)

    t_start = time.time()
    only = [c for c in args.categories.split(",") if c] or None
    images, captions, cats, _ = render_set(args.size, args.train_per_category, args.test_per_category, args.data_seed,
                                           only)
    ev_images, _, ev_cats, ev_labels = render_set(args.size, 0, args.eval_per_category, args.eval_seed, only)
    t_data = time.time() - t_start
    log(f"{len(captions)} training pairs ({len(set(captions))} distinct captions), {len(ev_cats)} held-out images, "
        f"rendered in {t_data:.0f} s")

    tokenizer = tiny_tokenizer(max_length=args.max_tokens)
    config = tiny_clip_config(tokenizer, image_size=args.size, patch_size=args.patch, vision_width=args.vision_width,
                              vision_layers=args.vision_layers, text_width=args.text_width,
                              text_layers=args.text_layers, projection_dim=args.projection_dim)
    with seeded(args.seed):
        model = CLIPModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    model.eval()
    random_init = evaluate(model, tokenizer, ev_images, ev_cats, ev_labels)
    log(f"{n_params / 1e6:.2f} M parameters; random init: category {random_init['category_accuracy']:.3f}, "
        f"defect {random_init['defect_accuracy_mean']:.3f}")

    t_train = time.time()
    history = train(model, tokenizer, images, captions, cats, steps=args.steps, batch=args.batch, lr=args.lr,
                    warmup=args.warmup, weight_decay=args.weight_decay, seed=args.seed,
                    categories_per_batch=args.categories_per_batch, scale_lr=args.scale_lr, log=log)
    t_train = time.time() - t_train
    model.eval()
    result = evaluate(model, tokenizer, ev_images, ev_cats, ev_labels)
    log(f"held-out zero-shot: category {result['category_accuracy']:.3f} (chance {result['category_chance']:.3f}), "
        f"defect type {result['defect_accuracy_mean']:.3f} (chance {result['defect_chance_mean']:.3f})")

    out = Path(args.out)
    save_clip(model, tokenizer, out, ClipPreprocess(size=args.size, crop=args.size))
    weights = out / "model.safetensors"
    record = {
        "command": f"OMP_NUM_THREADS={args.threads} nice -n 10 python tools/train_tiny_clip.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args), "seed": args.seed, "data_seed": args.data_seed, "eval_seed": args.eval_seed,
        "n_train_pairs": len(captions), "n_distinct_captions": len(set(captions)), "n_parameters": n_params,
        "weights_bytes": weights.stat().st_size, "torch": torch.__version__, "python": platform.python_version(),
        "render_seconds": round(t_data, 1), "train_seconds": round(t_train, 1),
        "seconds_per_step": round(t_train / max(args.steps, 1), 4), "total_seconds": round(time.time() - t_start, 1),
        "zero_shot_heldout": result, "zero_shot_heldout_random_init": random_init,
        "loss": [round(float(r["loss"]), 5) for r in history],
        "logit_scale": [round(float(r["logit_scale"]), 3) for r in history],
    }
    import transformers

    record["transformers"] = transformers.__version__
    (out / "train_log.json").write_text(json.dumps(record, indent=1))
    if args.plot:
        plot_loss(record, Path(args.plot))
    log(f"wrote {out} ({weights.stat().st_size / 1e6:.1f} MB weights) in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
