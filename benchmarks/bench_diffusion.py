"""Per-step sampling time of the diffusion pipelines on CPU at 64², and the base model's training record.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_diffusion.py`` (writes
``benchmarks/results/diffusion.json``). One thread, as on a shared CPU; each pipeline runs a
warm-up call first, then a timed call of ``--steps`` steps; time per step = wall / steps (it
includes the per-call fixed cost of text and VAE encoding, spread over the steps). CPU time of
this process is reported next to wall time because the machines it runs on are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "diffusion.json"


def timed(fn, steps: int) -> dict:
    fn()  # warm-up
    w, c = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    return {"steps": steps, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "wall_per_step_s": round(wall / steps, 4),
            "cpu_per_step_s": round(cpu / steps, 4)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--paper-bbox", action="store_true", help="also time the paper-size BBox UNet (slow)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from anoplug_anomalydiffusion.anomalydiffusion import AnomalyDiffusion
    from anoplug_bboxdiffusion.bboxdiffusion import BBoxDiffusion

    from anoplug.data.toy import ToyDataset
    from anoplug.diffusion.tiny import TINY_BASE_DIR, load_tiny_base

    n, s = args.batch, args.steps
    normals = ToyDataset("wood", "train", size=64, length=n).batch(range(n))
    test = ToyDataset("wood", "test", size=64, length=24, defects=["crack"])
    anomalies = test.batch([i for i in range(len(test)) if test.label(i) != "good"][:3])
    res: dict = {"machine": platform.machine(), "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
                 "batch": n, "size": 64, "torch": torch.__version__, "pipelines": {}}

    pipe = load_tiny_base()
    gen = torch.Generator().manual_seed(0)
    res["pipelines"]["tiny_base_txt2img"] = timed(lambda: pipe(["a normal wood grain without defects"] * n, num_inference_steps=s,
                                                              height=64, width=64, output_type="pt", guidance_scale=1.0,
                                                              generator=gen), s)
    res["pipelines"]["tiny_base_txt2img_cfg"] = timed(lambda: pipe(["a normal wood grain without defects"] * n,
                                                                  num_inference_steps=s, height=64, width=64,
                                                                  output_type="pt", guidance_scale=5.0, generator=gen), s)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 24:40] = 1
    asked = normals.with_conditions(target_mask=mask)
    for arr in (False, True):
        ad = AnomalyDiffusion(steps=s, adaptive_reweighting=arr, mask_fit_steps=0).fit(None, anomalies, steps=2)
        res["pipelines"][f"anomalydiffusion_blend{'_arr' if arr else ''}"] = timed(
            lambda ad=ad: ad.generate(asked, seed=0), s)
    ad = AnomalyDiffusion(steps=s, adaptive_reweighting=True, guidance=5.0, mask_fit_steps=0).fit(None, anomalies, steps=2)
    res["pipelines"]["anomalydiffusion_blend_arr_guided"] = timed(lambda: ad.generate(asked, seed=0), s)
    ad = AnomalyDiffusion(steps=s, mask_steps=s, mask_fit_steps=2).fit(None, anomalies, steps=2)
    rngs = lambda: [torch.Generator().manual_seed(i) for i in range(n)]
    res["pipelines"]["anomalydiffusion_mask_model_cfg"] = timed(lambda: ad.generate_masks(["crack"] * n, rngs(), 64), s)
    for model in ("tiny", "paper") if args.paper_bbox else ("tiny",):
        bb = BBoxDiffusion(model=model, sample_steps=s).fit(normals, anomalies, steps=1)
        res["pipelines"][f"bboxdiffusion_{model}"] = timed(lambda bb=bb: bb.generate(normals, seed=0), s)
        res["pipelines"][f"bboxdiffusion_{model}"]["params_M"] = round(sum(p.numel() for p in bb.unet.parameters()) / 1e6, 2)
    log = TINY_BASE_DIR / "train_log.json"
    if log.is_file():
        rec = json.loads(log.read_text())
        res["tiny_base_training"] = {k: rec[k] for k in ("command", "seed", "vae_seconds", "unet_seconds", "total_seconds",
                                                         "final_vae_rec_loss", "final_unet_loss", "params")}
        res["tiny_base_training"]["vae_trained_by"] = rec.get("vae_trained_by")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
