"""Figures and numbers of the README from the shipped ``toy-defects`` weights (fixed seeds, CPU, 1 thread).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python plugins/anoplug-anomalycontrol/tools/make_figures.py

Writes ``docs/grid.png`` (targets, masks, references, results, change), ``docs/asea.png``
(Q-Former attention before / after ASEA) and ``docs/metrics.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import matplotlib
import torch
from anoplug_anomalycontrol.method import AnomalyControl

from anoplug.data.toy import render
from anoplug.ops import gaussian_blur
from anoplug.types import Batch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tools"))
#: (target category, reference category, reference test index): references from *other* products
PAIRS = [("wood", "metal", 1), ("tile", "capsule", 2), ("carpet", "fabric", 3), ("bottle", "nut", 1)]


def _cat(parts: list[Batch]) -> Batch:
    return Batch(image=torch.cat([b.image for b in parts]), mask=torch.cat([b.mask for b in parts]),
                 label=[b.label[0] for b in parts], meta=[b.meta[0] for b in parts],
                 text=[(b.text or [""])[0] for b in parts])


def _first_defect(cat: str, start: int) -> Batch:
    for i in range(start, start + 40):
        b = render(cat, "test", i, 0, 64)
        if b.label[0] != "good" and bool(b.mask.any()):
            return b
    raise RuntimeError(f"no defect of {cat}")


def sga_heldout(gen: AnomalyControl, repeats: int = 8) -> dict[str, float]:
    """ε-MSE at the training scale on fixed (t, ε) draws, with each item's semantic vector vs a zeroed one.

    Lower with the vector means the SGA tokens carry information the UNet uses (the training data,
    so this is a fit measure, not generalisation).
    """
    from train_toy import toy_defects

    from anoplug.diffusion.finetune.common import noise_prediction_loss

    data = toy_defects(12)
    size = gen._work_size()
    img, msk = gen._resize(data.image, size), gen._resize(data.mask, size, mask=True)
    z0, lat, masked = gen._inpaint_inputs(img, msk)
    with torch.no_grad():
        text = gen.parts.encode_text(list(data.text))
        pooled = gen.semantics(img, msk, list(data.text)).output.pooled
        gen.sga.set_scale(gen.params.train_scale)
        out = {}
        for name, vec in (("with_semantics", pooled), ("zeroed_semantics", torch.zeros_like(pooled))):
            g = torch.Generator().manual_seed(1234)
            vals = [float(noise_prediction_loss(gen._model(lat, masked), gen.parts.scheduler, z0,
                                                gen.sga.context(text, vec), generator=g)) for _ in range(repeats)]
            out[f"train_set_eps_mse_{name}"] = round(sum(vals) / len(vals), 6)
    gen.sga.set_scale(gen.params.sga_scale)
    return out


def main() -> None:
    torch.set_num_threads(1)
    gen = AnomalyControl.from_pretrained("toy-defects")
    targets = _cat([render(t, "train", 0, 0, 64) for t, _, _ in PAIRS])
    refs = _cat([_first_defect(r, i) for _, r, i in PAIRS])
    cond = dict(references=refs.image[:, None], reference_masks=refs.mask[:, None], target_mask=refs.mask,
                prompt=list(refs.text))  # the reference caption (prompt fallback until reference_captions lands)
    batch = targets.with_conditions(**cond)
    gen.generate(batch, seed=0)  # warm-up (loads, first-call overheads)
    t0 = time.perf_counter()
    out = gen.generate(batch, seed=0)
    s_img = (time.perf_counter() - t0) / len(batch)
    asea = gen.last_asea
    gen.with_generation_params(steps=50)
    t0 = time.perf_counter()
    gen.generate(batch, seed=0)
    s_img50 = (time.perf_counter() - t0) / len(batch)
    gen.with_generation_params(steps=20)
    # mask precision
    diff = (out.image - targets.image).abs().amax(1, keepdim=True)
    m = out.mask > 0.5
    sigma = gen.params.blur_sigma * 64 / 512
    support = gaussian_blur(out.mask, sigma) > 0
    changed = diff > 0
    visible = diff > 0.05
    inter = (visible & m).sum().item()
    union = (visible | m).sum().item()
    metrics = {
        "seconds_per_image_cpu_1thread_steps20_strength0.7": round(s_img, 3),
        "seconds_per_image_cpu_1thread_steps50_strength0.7": round(s_img50, 3),
        "changed_pixels_outside_blur_support": int((changed & ~support).sum()),
        "changed_fraction_of_pixels_outside_mask": round(float((changed & ~m).sum() / (~m).sum()), 5),
        "visible_change_(>0.05)_outside_mask_fraction": round(float((visible & ~m).sum() / (~m).sum()), 5),
        "iou_visible_change_vs_mask": round(inter / max(union, 1), 4),
        "mean_abs_change_inside_mask": round(float(diff[m].mean()), 4),
        "asea_in_mask_fraction_before": [round(float(v), 4) for v in
                                         (asea.before * gen.csm.grid_mask(refs.mask)).sum(-1) / asea.before.sum(-1)],
        "asea_in_mask_fraction_after": [m_["sample"]["asea_in_mask_fraction"] for m_ in out.meta],
    }
    metrics.update(sga_heldout(gen))
    (HERE / "docs/metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))

    # grid
    rows = ["target (normal)", "target mask", "reference + mask", "AnomalyControl", "|change| ×3"]
    fig, axes = plt.subplots(len(rows), len(PAIRS), figsize=(2.2 * len(PAIRS), 2.2 * len(rows)))
    for j, (t, r, _) in enumerate(PAIRS):
        ims = [targets.image[j].permute(1, 2, 0), out.mask[j, 0], refs.image[j].permute(1, 2, 0),
               out.image[j].permute(1, 2, 0),
               (diff[j, 0] * 3).clamp(0, 1)]
        for i, im in enumerate(ims):
            ax = axes[i, j]
            ax.imshow(im, cmap="gray" if i in (1, 4) else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 2:
                ax.contour(refs.mask[j, 0], levels=[0.5], colors="r", linewidths=0.8)
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=8)
        axes[0, j].set_title(f"{t} ← {r}", fontsize=9)
        axes[2, j].set_xlabel(refs.text[j][:28], fontsize=6)
    fig.tight_layout()
    fig.savefig(HERE / "docs/grid.png", dpi=100)
    plt.close(fig)

    # ASEA attention
    g = gen.csm.grid
    fig, axes = plt.subplots(3, len(PAIRS), figsize=(2.2 * len(PAIRS), 6.6))
    for j in range(len(PAIRS)):
        axes[0, j].imshow(refs.image[j].permute(1, 2, 0))
        axes[0, j].contour(refs.mask[j, 0], levels=[0.5], colors="r", linewidths=0.8)
        for i, (att, name) in enumerate([(asea.before, "before ASEA"), (asea.output.attention, "after ASEA")], 1):
            a = att[j].reshape(g, g)
            axes[i, j].imshow(a, cmap="magma")
            axes[i, j].contour(torch.nn.functional.interpolate(refs.mask[j:j + 1], size=(g, g), mode="nearest")[0, 0],
                               levels=[0.5], colors="c", linewidths=0.8)
            frac = metrics["asea_in_mask_fraction_before" if i == 1 else "asea_in_mask_fraction_after"][j]
            axes[i, j].set_title(f"{name}: {frac:.2f} in mask", fontsize=8)
        for i in range(3):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.suptitle("Q-Former cross-attention (layers, heads, queries averaged) on the 8×8 patch grid", fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / "docs/asea.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
