"""Before/after grid for the README: AnomalyDiffusion on the tiny base model, fitted on a few toy defects.

    OMP_NUM_THREADS=1 python plugins/anoplug-anomalydiffusion/examples/before_after.py --category wood \\
        --defect stain --fit-steps 1000 --mask-fit-steps 300 --steps 200 --latent-mask-threshold 0.05 \\
        --guidance 5 --arr --out plugins/anoplug-anomalydiffusion/docs/before_after_wood_stain.png

Fits e_a + the spatial encoder on the first ⌊N/3⌋+1 of N real toy defects (the original's
split), the mask model on their masks, then generates on held-out normal images (a) inside
the masks of held-out real defects and (b) inside masks drawn from the mask model.
Everything is seeded; the fit losses and timings are printed and stored next to the image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--category", default="wood")
    ap.add_argument("--defect", default="crack")
    ap.add_argument("--n-defects", type=int, default=9, help="real defects available (⌊N/3⌋+1 are used)")
    ap.add_argument("--fit-steps", type=int, default=400)
    ap.add_argument("--mask-fit-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--arr", action="store_true", help="adaptive attention re-weighting (the original: for textures)")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="before_after.png")
    ap.add_argument("--base-model", default="tiny-base")
    ap.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance (original: 1 = none)")
    ap.add_argument("--latent-mask-threshold", type=float, default=0.5,
                    help="binarise the latent-size mask at (0 = every latent pixel the defect touches)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from anoplug_anomalydiffusion.anomalydiffusion import AnomalyDiffusion

    from anoplug.data.toy import ToyDataset

    test = ToyDataset(args.category, "test", size=64, length=(args.n_defects + args.n) * 2 + 4, defects=[args.defect])
    defect_idx = [i for i in range(len(test)) if test.label(i) == args.defect]
    train_defects = test.batch(defect_idx[: args.n_defects])
    held_out = test.batch(defect_idx[args.n_defects: args.n_defects + args.n])
    normals = ToyDataset(args.category, "train", size=64, length=args.n).batch(range(args.n))

    gen = AnomalyDiffusion(base_model=args.base_model, steps=args.steps, adaptive_reweighting=args.arr, batch_size=4,
                           latent_mask_threshold=args.latent_mask_threshold, latent_mask_resize="area", guidance=args.guidance,
                           mask_fit_steps=args.mask_fit_steps, seed=args.seed)
    t0 = time.time()
    gen.fit(None, train_defects, steps=args.fit_steps)
    fit_s = time.time() - t0
    asked = normals.with_conditions(target_mask=(held_out.mask > 0.5).float())
    t0 = time.time()
    with_masks = gen.generate(asked, seed=args.seed)
    gen_s = time.time() - t0
    with_generated = gen.generate(normals, seed=args.seed + 1)
    # ablation: the same masks and seed with e_a reset to the init word's embedding (the encoder stays trained)
    learned = gen.appearance.detach().clone()
    init = gen._embedding(gen.parts).base.weight[gen.parts.tokenizer(gen.params.init_word,
                                                                     add_special_tokens=False).input_ids[0]]
    with torch.no_grad():
        gen.appearance.copy_(init.detach()[None, None].expand_as(learned))
        untrained = gen.generate(asked, seed=args.seed)
        gen.appearance.copy_(learned)

    rows = [("normal input", normals.image), ("requested mask", held_out.mask.expand(-1, 3, -1, -1)),
            ("generated", with_masks.image), ("same, e_a untrained", untrained.image),
            ("real defect (reference)", held_out.image),
            ("mask from mask model", with_generated.mask.expand(-1, 3, -1, -1)), ("generated", with_generated.image)]
    fig, axes = plt.subplots(len(rows), args.n, figsize=(args.n * 1.2, len(rows) * 1.3))
    for r, (title, ims) in enumerate(rows):
        for c in range(args.n):
            ax = axes[r, c]
            ax.imshow(ims[c].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=6)
    used = len(gen._select(train_defects))
    fig.suptitle(f"AnomalyDiffusion on tiny-base: toy {args.category}/{args.defect}, fitted on {used} real defects "
                 f"({args.fit_steps}+{args.mask_fit_steps} steps), DDIM {args.steps}, ARR {args.arr}", fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    inside = with_masks.mask.bool().expand_as(normals.image)
    mad = lambda a, b, where: round(float((a - b).abs()[where].mean()), 4)
    record = {"args": vars(args), "fit_seconds": round(fit_s, 1), "generate_seconds": round(gen_s, 1), "images": args.n,
              "trained_on": used, "image_loss_first_last": [round(sum(x) / len(x), 4) for x in
                                                             (gen.losses["image"][:20], gen.losses["image"][-20:])],
              "mask_loss_first_last": [round(sum(x) / len(x), 4) for x in (gen.losses["mask"][:20], gen.losses["mask"][-20:])]
              if gen.losses["mask"] else None,
              "mean_abs_change_inside_mask": mad(with_masks.image, normals.image, inside),
              "mean_abs_change_outside_mask": mad(with_masks.image, normals.image, ~inside),
              "mean_abs_change_inside_mask_e_a_untrained": mad(untrained.image, normals.image, inside),
              "mean_abs_diff_inside_learned_vs_untrained": mad(with_masks.image, untrained.image, inside),
              "generated_mask_labels": with_generated.label}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
