"""The toy splits every script of this plugin uses (fixed, so the numbers in the README can be re-run).

The paper's data: MVTec AD *bottle*, 209 good and 63 defective images. Its analogue here is
``toy:bottle`` (a glass bottle top seen from above; defects crack, contamination, hole) at
the cpu preset's 32 px:

- ``ddpm_defects()``: 60 defective images (20 per type), the DDPM's whole training set and the
  classifier's real defects;
- ``train_good()``: 200 good images (the train split), of which the DDPM keeps 32 as its normal
  bank (never in its loss);
- ``test_set()``: a held-out, balanced evaluation set of 100 good and 99 defective images
  (other indices, so nothing overlaps the training images).
"""

from __future__ import annotations

from anoplug.data.toy import CATEGORIES, _to_batch, render_sample
from anoplug.types import GOOD, Batch

CATEGORY = "bottle"
SIZE = 32
DEFECTS = CATEGORIES[CATEGORY]["defects"]  # crack, contamination, hole


def _render(split: str, indices: range, labels: list[str], size: int = SIZE) -> Batch:
    return _to_batch([render_sample(CATEGORY, split, i, 0, size, label=lab) for i, lab in zip(indices, labels)])


def ddpm_defects(n: int = 60, size: int = SIZE) -> Batch:
    return _render("test", range(n), [DEFECTS[i % len(DEFECTS)] for i in range(n)], size)


def train_good(n: int = 200, size: int = SIZE) -> Batch:
    return _render("train", range(n), [GOOD] * n, size)


def test_set(n_good: int = 100, n_defect: int = 99, size: int = SIZE) -> Batch:
    good = _render("train", range(1000, 1000 + n_good), [GOOD] * n_good, size)
    bad = _render("test", range(1000, 1000 + n_defect), [DEFECTS[i % len(DEFECTS)] for i in range(n_defect)], size)
    return Batch.cat([good, bad])
