"""The README's figures and numbers from the shipped "surface3d" checkpoint (no training, no network).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python plugins/anoplug-anomalyhybrid/examples/figures.py

Writes ``docs/depth_edit_grid.png`` (edited depth -> AHD output, dent and protrusion),
``docs/strength_sweep.png`` (one disk, dent and protrusion at growing amplitude),
``docs/decoders.png`` (AHD vs AHE on the same region, and a global transfer) and
``docs/measurements.json`` (seconds per image at 1 thread, mask precision against the edit region).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
DOCS = HERE / "docs"


def _norm(d: torch.Tensor) -> torch.Tensor:
    lo, hi = d.amin((2, 3), keepdim=True), d.amax((2, 3), keepdim=True)
    return ((d - lo) / (hi - lo).clamp_min(1e-6)).expand(-1, 3, -1, -1)


def _disk(n: int, size: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((((yy - cy * size) ** 2 + (xx - cx * size) ** 2) <= (r * size) ** 2).float()).expand(n, 1, size, size).clone()


def _with(gen, **update):
    gen.params = gen.params.model_copy(update=update)
    return gen


def main() -> None:
    from anoplug_anomalyhybrid.anomalyhybrid import AnomalyHybrid, AnomalyHybridGlobal
    from anoplug_metrics.mask_precision import MaskPrecision
    from torchvision.utils import make_grid, save_image

    from anoplug.data import open_dataset

    torch.set_num_threads(1)
    DOCS.mkdir(parents=True, exist_ok=True)
    held_out = open_dataset("toy:surface3d", split="test", size=64).all()
    normals = held_out[[i for i, lab in enumerate(held_out.label) if lab == "good"]]  # not seen in training
    four = normals[:4]
    centres = [(0.35, 0.4), (0.6, 0.55), (0.45, 0.65), (0.5, 0.35)]
    target = torch.cat([_disk(1, 64, cy, cx, 0.16) for cy, cx in centres])
    rows = []
    for edit in ("dent", "protrusion"):
        g = _with(AnomalyHybrid.from_pretrained("surface3d"), edit=edit, decoder="depth", edit_jitter=0.0)
        b = four.with_conditions(target_mask=target)
        recs = g.sample(b, [torch.Generator().manual_seed(i) for i in range(4)])
        image, depth, edge = g.structure(b)
        new_depth, _ = g.edited(depth, edge, g.regions(b, recs), recs)
        out = g.generate(b, seed=0)
        diff = ((out.image - four.image).abs().amax(1, keepdim=True) * 4).clamp(0, 1).expand(-1, 3, -1, -1)
        rows += [four.image, _norm(depth), _norm(new_depth), out.image, diff, out.mask.expand(-1, 3, -1, -1)]
    # columns = samples; rows: (dent) input, depth, edited depth, output, |change|x4, mask; then the same for protrusion
    grid = make_grid(torch.stack(rows, 1).flatten(0, 1), nrow=len(rows), padding=2, pad_value=1.0)
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0], DOCS / "depth_edit_grid.png")

    # the same disk edited ever deeper (dent) and ever higher (protrusion): the output follows the amplitude
    cols = [four.image]
    for edit in ("dent", "protrusion"):
        for strength in (0.4, 0.8, 1.5, 2.5):
            g = _with(AnomalyHybrid.from_pretrained("surface3d"), edit=edit, decoder="depth", edit_jitter=0.0,
                      edit_strength=strength)
            cols.append(g.generate(four.with_conditions(target_mask=_disk(4, 64, 0.5, 0.5, 0.17)), seed=0).image)
    grid = make_grid(torch.stack(cols, 1).flatten(0, 1), nrow=len(cols), padding=2, pad_value=1.0)
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0], DOCS / "strength_sweep.png")

    # AHD vs AHE on the same region; global transfer with a reference
    ahd = _with(AnomalyHybrid.from_pretrained("surface3d"), decoder="depth", edit="dent")
    ahe = _with(AnomalyHybrid.from_pretrained("surface3d"), decoder="edge")
    b = four.with_conditions(target_mask=target)
    recs = ahe.sample(b, [torch.Generator().manual_seed(i) for i in range(4)])
    image, depth, edge = ahe.structure(b)
    _, new_edge = ahe.edited(depth, edge, ahe.regions(b, recs), recs)
    glob = _with(AnomalyHybridGlobal.from_pretrained("surface3d"), decoder="depth")
    ref = normals[4:8].image.flip(-1)
    g_out = glob.generate(four.with_conditions(source_image=ref), seed=0)
    cols = [four.image, ahd.generate(b, seed=0).image, edge.expand(-1, 3, -1, -1), new_edge.expand(-1, 3, -1, -1),
            ahe.generate(b, seed=0).image, ref, g_out.image]
    grid = make_grid(torch.stack(cols, 1).flatten(0, 1), nrow=len(cols), padding=2, pad_value=1.0)
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0], DOCS / "decoders.png")

    # numbers: 16 held-out normals, drawn ellipses (the default draws), dent/protrusion at random
    g = AnomalyHybrid.from_pretrained("surface3d")
    n16 = normals[:16]
    g.generate(n16[:2], seed=0)  # warm-up
    t0 = time.perf_counter()
    out = g.generate(n16, seed=0)
    s64 = (time.perf_counter() - t0) / len(n16)
    big = open_dataset("toy:surface3d", split="test", size=256).all()[:4]
    t0 = time.perf_counter()
    g.generate(big, seed=0)
    s256 = (time.perf_counter() - t0) / len(big)
    region = g.regions(n16, out.samples) > 0.02  # the drawn ellipse of each record (its cos² bump > 0.02)
    m = out.mask.bool()
    inter = (m & region).flatten(1).sum(1).float()
    union = (m | region).flatten(1).sum(1).float()
    prec = inter / m.flatten(1).sum(1).clamp_min(1)
    rec = inter / region.flatten(1).sum(1).clamp_min(1)
    report = MaskPrecision().evaluate(out, normals=n16)
    meas = {"data": f"toy:surface3d test split, its {len(n16)} 'good' images (not in training), 64 px, default draws",
            "seconds_per_image_64px_1thread": round(s64, 4), "seconds_per_image_256px_1thread": round(s256, 4),
            "anomalous_fraction": float((m.flatten(1).any(1)).float().mean()),
            "mask_in_edit_region_precision": round(float(prec.mean()), 3),
            "edit_region_recall": round(float(rec.mean()), 3),
            "iou_mask_vs_edit_region": round(float((inter / union.clamp_min(1)).mean()), 3),
            "mask_precision_evaluator": {k: round(v.value, 4) for k, v in report.metrics.items()}}
    (DOCS / "measurements.json").write_text(json.dumps(meas, indent=1))
    print(json.dumps(meas, indent=1))


if __name__ == "__main__":
    main()
