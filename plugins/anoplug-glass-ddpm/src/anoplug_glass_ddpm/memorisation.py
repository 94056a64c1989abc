"""Nearest-neighbour memorisation check: does the DDPM give back its training defects?

A DDPM fitted on a few dozen images (the paper: 63) can learn them by heart and sample near
copies, which would add no new information to a classifier. The check compares two
distance distributions at one common size, in RMS over pixels in [0, 1]:

- *generated → training*: each generated image's distance to its nearest training defect;
- *training → training* (leave-one-out): each training defect's distance to its nearest
  *other* training defect, the scale of "a different defect image" in this data.

A generated image is flagged as a likely copy when its distance is below ``ratio`` times the
median leave-one-out distance (our assumption: ratio 0.5). An exact copy has distance ≈ 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["nearest_distances", "MemorisationReport", "memorisation_check", "quantiles"]


def _flat(x: torch.Tensor, size: int | None) -> torch.Tensor:
    x = x.float()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        down = size < x.shape[-2]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=down)
    return x.flatten(1)


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, *, size: int | None = 32,
                      exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS distance ``[N]`` from each query ``[N,3,H,W]`` to its nearest reference ``[M,3,H',W']``, and its index.

    Both are resized to ``size`` first (None: as they are; they must then match). With
    ``exclude_self`` the queries *are* the references and each one's own row is skipped
    (leave-one-out).
    """
    a, b = _flat(queries, size), _flat(references, size)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"queries and references differ in size: {tuple(queries.shape)} vs {tuple(references.shape)}")
    d = torch.cdist(a.double(), b.double()) / a.shape[1] ** 0.5
    if exclude_self:
        if len(a) != len(b) or len(a) < 2:
            raise ValueError("exclude_self needs the same set of at least two images as queries and references")
        d.fill_diagonal_(float("inf"))
    dist, idx = d.min(1)
    return dist.float(), idx


def quantiles(x: torch.Tensor) -> dict[str, float]:
    """min, 5 %, 25 %, median, 75 %, 95 %, max and mean of a distance vector (rounded to 1e-4)."""
    qs = torch.quantile(x.double(), torch.tensor([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0], dtype=torch.float64))
    names = ("min", "p05", "p25", "median", "p75", "p95", "max")
    out = {k: round(float(v), 4) for k, v in zip(names, qs)}
    out["mean"] = round(float(x.double().mean()), 4)
    return out


@dataclass
class MemorisationReport:
    """The two distance distributions, the threshold and which generated images fall under it."""

    generated_to_train: torch.Tensor  # [N] distance of each generated image to its nearest training defect
    nearest_train_index: torch.Tensor  # [N] which training defect that is
    train_leave_one_out: torch.Tensor  # [M] distance of each training defect to its nearest other one
    threshold: float
    flagged: torch.Tensor  # [N] bool: a likely copy

    @property
    def copy_fraction(self) -> float:
        return float(self.flagged.float().mean()) if len(self.flagged) else 0.0

    def summary(self) -> dict:
        """A JSON-ready digest: both distributions' quantiles, the threshold, the flagged count."""
        d = asdict(self)
        return {"generated_to_train": quantiles(d["generated_to_train"]),
                "train_leave_one_out": quantiles(d["train_leave_one_out"]),
                "threshold": round(self.threshold, 4), "n_generated": int(len(self.flagged)),
                "n_flagged": int(self.flagged.sum()), "copy_fraction": round(self.copy_fraction, 4)}


def memorisation_check(generated: torch.Tensor, training: torch.Tensor, *, ratio: float = 0.5,
                       size: int | None = 32) -> MemorisationReport:
    """Nearest-neighbour distances of ``generated`` to ``training`` defects, against the training set's own scale.

    ``flagged[i]`` when generated image *i* is closer to a training defect than ``ratio`` ×
    the median leave-one-out distance of the training defects.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    d_gen, idx = nearest_distances(generated, training, size=size)
    d_loo, _ = nearest_distances(training, training, size=size, exclude_self=True)
    threshold = ratio * float(d_loo.median())
    return MemorisationReport(d_gen, idx, d_loo, threshold, d_gen < threshold)
