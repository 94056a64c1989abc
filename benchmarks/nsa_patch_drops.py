"""NSA patch drop rate and empty labels, ours vs the official ``_patch_ex``, on the same inputs.

Toy capsule at 256² (a thin object), the toy object masks handed to both, each image pasted
from the next one, 16 seeds × 64 images, the capsule preset (half-widths 0.03–0.15 / 0.03–0.4,
3 patches, min object 0.7, min overlap 0.25). The official code is read from a checkout of
hmsch/natural-synthetic-anomalies given as an argument (never vendored):

    python benchmarks/nsa_patch_drops.py [PATH_TO_OFFICIAL_CHECKOUT]

Without a path only our numbers are printed. Writes benchmarks/results/nsa_patch_drops.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from anoplug.data.toy import ToyDataset

SEEDS, N, SIZE = 16, 64, 256


def ours(batch, sources) -> dict:
    from anoplug_nsa.nsa import NSA

    b = batch.with_conditions(source_image=sources.image, source_object_mask=sources.object_mask)
    drawn = kept = empty = 0
    for seed in range(SEEDS):
        out = NSA().generate(b, seed=seed)
        for meta, m in zip(out.meta, out.mask):
            rec = meta["sample"]
            drawn += rec["n_drawn"]
            kept += sum(p is not None for p in rec["patches"])
            empty += int(m.sum() == 0)
    return {"drawn": drawn, "dropped_pct": 100 * (1 - kept / drawn), "empty_labels": empty, "images": SEEDS * N}


def official(path: Path, batch) -> dict:
    import cv2

    sys.path.insert(0, str(path / "self_sup_data"))
    import self_sup_tasks as off  # the official module, from the user's checkout

    img = (batch.image.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    obj = batch.object_mask[:, 0].numpy().astype(np.uint8)[..., None]
    drawn = dropped = empty = 0
    for seed in range(SEEDS):
        np.random.seed(seed)
        for i in range(N):
            j = (i + 1) % N
            dest, src = img[i], img[j]
            mask, patchex = np.zeros_like(dest[..., :1]), dest.copy()
            for k in range(3):
                if k == 0 or np.random.randint(2) > 0:
                    drawn += 1
                    patchex, ((a, b), (c, d)), pm = off._patch_ex(
                        patchex, src, obj[i].copy(), obj[j].copy(), cv2.NORMAL_CLONE, "logistic-intensity", True, True,
                        ((0.03, 0.15), (0.03, 0.4)), (2, 0.05, 0.03), 0.7, 0.25, 1, (0.7, 1.3), None, False, False)
                    if pm is None:
                        dropped += 1
                    else:
                        mask[a:b, c:d] = pm
            lab = np.uint8(np.mean(np.abs(1.0 * mask * dest - 1.0 * mask * patchex), axis=-1, keepdims=True) > 1)
            empty += int(cv2.medianBlur(lab[..., 0], 5).sum() == 0)
    return {"drawn": drawn, "dropped_pct": 100 * dropped / drawn, "empty_labels": empty, "images": SEEDS * N}


def main() -> None:
    ds = ToyDataset("capsule", "train", size=SIZE, length=N)
    batch, sources = ds.batch(range(N)), ds.batch([(i + 1) % N for i in range(N)])
    result = {"setting": __doc__.split("\n\n")[1].replace("\n", " "), "ours": ours(batch, sources)}
    if len(sys.argv) > 1:
        result["official"] = official(Path(sys.argv[1]), batch)
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "nsa_patch_drops.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
