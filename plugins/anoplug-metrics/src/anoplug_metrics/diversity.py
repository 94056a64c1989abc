"""IC-LPIPS: intra-cluster LPIPS diversity (Ojha et al., CVPR 2021), in the variants papers actually ran.

Recipe: the real defect images are cluster centres; each generated image joins its
LPIPS-nearest centre; the score is the mean pairwise LPIPS inside each cluster (on at most
``cap`` random members), averaged over clusters, then over defect types. A generator that
copies its references scores low even when every copy is sharp; one that varies scores high.

The variants differ in ways that move the number, so the report names the one used:

=================  =======  ====  ===============  =========================
variant            net      cap   pairs            empty / singleton cluster
=================  =======  ====  ===============  =========================
anomalydiffusion   VGG16    50    unordered        dropped (NaN-mean)
dfmgan             AlexNet  200   ordered          counted as 0
seas               VGG16    140   unordered        counted as 0
=================  =======  ====  ===============  =========================

Both sides are rescaled the same way (DFMGAN's and SeaS's code feed uint8 centres against
[-1, 1] generated images; we do not reproduce that bug).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from anoplug.evaluator import Evaluator, Metric, Report
from anoplug.params import Params
from anoplug.types import GOOD, Batch

__all__ = ["VARIANTS", "cluster_diversity", "ICLPIPS"]

_EMBED_BUDGET_BYTES = 1 << 30  # above this, embeddings are recomputed for the sampled cluster members

#: variant -> (net, cap, ordered pairs, singleton handling)
VARIANTS: dict[str, tuple[str, int, bool, str]] = {
    "anomalydiffusion": ("vgg16", 50, False, "drop"),
    "dfmgan": ("alexnet", 200, True, "zero"),
    "seas": ("vgg16", 140, False, "zero"),
}


def cluster_diversity(dist_to_centres: np.ndarray, pairwise: Callable[[np.ndarray], np.ndarray], *, cap: int,
                      ordered: bool = False, singletons: str = "drop",
                      rng: np.random.Generator | None = None) -> tuple[float, list[float]]:
    """Mean within-cluster distance; returns (score, per-cluster values with NaN for dropped clusters).

    ``dist_to_centres`` is [N generated, K centres]; ``pairwise(indices)`` returns the [m, m]
    distance matrix of those generated samples.
    """
    rng = rng or np.random.default_rng(0)
    d = np.asarray(dist_to_centres, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] == 0:
        raise ValueError("IC-LPIPS needs at least one real centre")
    assign = d.argmin(1)
    per_cluster: list[float] = []
    for k in range(d.shape[1]):
        members = np.flatnonzero(assign == k)
        if len(members) > cap:
            members = np.sort(rng.choice(members, size=cap, replace=False))
        if len(members) < 2:
            per_cluster.append(float("nan") if singletons == "drop" else 0.0)
            continue
        m = np.asarray(pairwise(members), dtype=np.float64)
        iu = np.triu_indices(len(members), 1)
        # Ordered pairs (i != j) of a symmetric distance have the same mean as the unordered ones,
        # but we compute each as its variant does, so an asymmetric distance is handled faithfully.
        vals = m[~np.eye(len(members), dtype=bool)] if ordered else m[iu]
        per_cluster.append(float(vals.mean()))
    arr = np.asarray(per_cluster)
    score = float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
    return score, per_cluster


class ICLPIPSParams(Params):
    variant: Literal["anomalydiffusion", "dfmgan", "seas"] = Field(
        "anomalydiffusion", description="whose recipe: net, per-cluster cap, pair ordering and singleton handling")
    resize: int = Field(256, ge=0, le=1024, description="side both sets are resized to before LPIPS (0 = keep)")
    defect_region_only: bool = Field(False, description="multiply images by their mask first (SeaS's IC-LPIPS(a))")
    per_defect_type: bool = Field(True, description="cluster per defect type when generated labels match real ones")
    allow_substitute: bool = Field(True, description="without LPIPS weights, report a clearly renamed random-VGG substitute")
    chunk: int = Field(8, ge=1, le=256, description="images per LPIPS forward pass (memory vs speed)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the per-cluster subsampling")


class ICLPIPS(Evaluator):
    """Diversity of ``generated`` anomalies around the ``real`` defect images (higher = more diverse)."""

    name = "ic-lpips"
    title = "IC-LPIPS diversity"
    Params = ICLPIPSParams

    def _model(self, net: str) -> tuple[torch.nn.Module, str]:
        from anoplug_metrics.lpips import LpipsWeightsMissing, load_lpips, random_lpips

        try:
            return load_lpips(net), "ic_lpips"
        except LpipsWeightsMissing:
            if not self.params.allow_substitute:
                raise
            return random_lpips(net), f"ic_lpips_substitute_random_{net}"

    def _prep(self, batch: Batch) -> torch.Tensor:
        x = batch.image
        if self.params.defect_region_only:
            x = x * batch.mask
        if self.params.resize and x.shape[-1] != self.params.resize:
            x = F.interpolate(x, size=(self.params.resize,) * 2, mode="bilinear", align_corners=False)
        return x

    def _embed(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.embed(x[i:i + self.params.chunk]) for i in range(0, len(x), self.params.chunk)])

    def evaluate(self, generated: Batch, *, normals: Batch | None = None, real: Batch | None = None) -> Report:
        if real is None:
            raise ValueError("ic-lpips needs `real` defect images as cluster centres")
        net, cap, ordered, singletons = VARIANTS[self.params.variant]
        model, metric_name = self._model(net)
        real_idx = [i for i, lab in enumerate(real.label) if lab != GOOD] or list(range(len(real)))
        gen_idx = [i for i, lab in enumerate(generated.label) if lab != GOOD] or list(range(len(generated)))
        real_b, gen_b = real[real_idx], generated[gen_idx]
        groups = self._groups(gen_b.label, real_b.label)
        rng = np.random.default_rng(self.params.seed)
        per_type: dict[str, float] = {}
        clusters: dict[str, list[float]] = {}
        for name, (gi, ri) in groups.items():
            centres = self._embed(model, self._prep(real_b[ri])).double()
            gen_g = gen_b[gi]
            # One embedding per generated image; kept for the within-cluster pairs when it fits in memory.
            keep = len(gen_g) * centres.shape[1] * 4 <= _EMBED_BUDGET_BYTES
            kept, dists = [], []
            for s in range(0, len(gen_g), self.params.chunk):
                e = self._embed(model, self._prep(gen_g[list(range(s, min(s + self.params.chunk, len(gen_g))))]))
                dists.append(torch.cdist(e.double(), centres).pow(2))
                if keep:
                    kept.append(e)  # float32: half the memory; distances are taken in float64
            d = torch.cat(dists).numpy()
            emb = torch.cat(kept) if keep else None

            def pairwise(idx: np.ndarray, emb: torch.Tensor | None = emb, gen_g: Batch = gen_g) -> np.ndarray:
                e = emb[torch.as_tensor(idx)] if emb is not None else self._embed(model, self._prep(gen_g[idx.tolist()]))
                e = e.double()
                return torch.cdist(e, e).pow(2).numpy()

            per_type[name], clusters[name] = cluster_diversity(d, pairwise, cap=cap, ordered=ordered,
                                                                singletons=singletons, rng=rng)
        vals = np.array([v for v in per_type.values()], dtype=np.float64)
        score = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        desc = (f"IC-LPIPS, {self.params.variant} variant: LPIPS-{net} v0.1, <= {cap} per cluster, "
                f"{'ordered' if ordered else 'unordered'} pairs, singletons {'dropped' if singletons == 'drop' else 'as 0'}, "
                f"real images as centres, both sides in [-1,1] at {self.params.resize or 'native'} px"
                + ("" if metric_name == "ic_lpips" else "; SUBSTITUTE: random VGG weights, not comparable to papers"))
        return Report(self.name, {metric_name: Metric(score, True, desc)},
                      details={"variant": self.params.variant, "net": net, "per_type": per_type, "clusters": clusters,
                               "n_generated": len(gen_b), "n_centres": len(real_b)})

    def _groups(self, gen_labels: list[str], real_labels: list[str]) -> dict[str, tuple[list[int], list[int]]]:
        """Defect type -> (generated indices, real indices); one pooled group when labels do not match."""
        real_types = set(real_labels)
        if self.params.per_defect_type and set(gen_labels) <= real_types:
            return {t: ([i for i, lab in enumerate(gen_labels) if lab == t], [i for i, lab in enumerate(real_labels) if lab == t])
                    for t in sorted(set(gen_labels))}
        return {"all": (list(range(len(gen_labels))), list(range(len(real_labels))))}
