"""anoplug.metrics against hand-computed values on tiny inputs (and sklearn where installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoplug import metrics as M


def test_auroc_ap_f1_hand_values() -> None:
    s, y = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    # Pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4.
    assert M.auroc(s, y) == pytest.approx(0.75)
    # Thresholds 0.8: P=1 R=.5; 0.4: P=.5 R=.5; 0.35: P=2/3 R=1 -> AP = .5*1 + .5*2/3.
    assert M.average_precision(s, y) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Best F1 at 0.35: 2*(2/3)*1/(2/3+1) = 0.8.
    assert M.f1_max(s, y) == pytest.approx(0.8)


def test_ties_count_one_half() -> None:
    assert M.auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert M.auroc([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    # Torch input works too.
    assert M.auroc(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])) == 1.0


def test_single_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        M.auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        M.auroc([0.1, 0.2], [0.5, 1])


def test_against_sklearn_on_random_data() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 2)  # rounding creates many ties
    assert M.auroc(s, y) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(s, y) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    p, r, _ = sk.precision_recall_curve(y, s)
    f1 = np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0))
    assert M.f1_max(s, y) == pytest.approx(f1, abs=1e-12)


def test_f1_grid_is_coarser_than_exact() -> None:
    s = [0.12, 0.33, 0.61, 0.97]
    y = [0, 1, 0, 1]
    # Grid t in {0,...,1}: t<=0.12 -> P=.5 R=1 F1=2/3; t in (0.12, 0.33] -> P=2/3, R=1 -> 0.8.
    assert M.f1_max_grid(s, y) == pytest.approx(0.8)
    assert M.f1_max(s, y) == pytest.approx(0.8)
    # A threshold grid that skips (0.12, 0.33] cannot reach 0.8.
    assert M.f1_max_grid(s, y, thresholds=[0.0, 0.5, 1.0]) == pytest.approx(2 / 3)


def test_image_score_is_max_of_21x21_mean() -> None:
    m = torch.zeros(2, 1, 32, 32)
    m[0, 0, 16, 16] = 441.0  # one hot pixel: the 21x21 mean around it is 1
    m[1, 0, 10:31, 5:26] = 0.5  # a 21x21 block: mean 0.5 at its centre
    assert M.image_scores(m) == pytest.approx([1.0, 0.5])
    assert M.image_scores(m, filter_size=1) == pytest.approx([441.0, 0.5])


def test_eight_connectivity() -> None:
    m = np.zeros((2, 5, 5))
    m[0, 0, 0] = m[0, 1, 1] = m[0, 2, 2] = 1  # a diagonal: one 8-connected component
    m[0, 4, 4] = 1  # separate (gap at 3,3)
    m[1, 0, 0] = 1  # same place, next image: must not merge across the batch axis
    _, n = M.connected_components(m)
    assert n == 3


def _pro_reference(maps: np.ndarray, gts: np.ndarray, n: int = 100, limit: float = 0.3) -> float:
    """Straightforward loop transcription of the MVTec 3D-AD recipe, for cross-checking."""
    from scipy import ndimage

    comps = []
    normal = []
    for a, g in zip(maps, gts):
        lab, k = ndimage.label(g, structure=np.ones((3, 3)))
        normal.append(a[lab == 0])
        comps += [a[lab == i] for i in range(1, k + 1)]
    normal = np.sort(np.concatenate(normal))
    fprs, pros = [1.0], [1.0]
    for pos in np.linspace(0, normal.size - 1, num=n).astype(int):
        t = normal[pos]
        fprs.append(1 - (pos + 1) / normal.size)
        pros.append(np.mean([np.mean(c > t) for c in comps]))
    x, yv = np.array(fprs[::-1]), np.array(pros[::-1])
    area = 0.0
    for i in range(1, x.size):
        if x[i] <= limit:
            area += 0.5 * (yv[i] + yv[i - 1]) * (x[i] - x[i - 1])
        elif x[i - 1] < limit:
            y_at = yv[i - 1] + (yv[i] - yv[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
            area += 0.5 * (yv[i - 1] + y_at) * (limit - x[i - 1])
    return area / limit


def test_au_pro_matches_reference_loop() -> None:
    rng = np.random.default_rng(1)
    gts = np.zeros((3, 24, 24))
    gts[0, 2:6, 2:6] = 1
    gts[0, 10:20, 12:14] = 1
    gts[1, 5:9, 15:23] = 1
    maps = rng.random((3, 24, 24)) + 0.6 * gts
    assert M.au_pro(maps, gts) == pytest.approx(_pro_reference(maps, gts), abs=1e-12)


def test_au_pro_extremes() -> None:
    gts = np.zeros((2, 16, 16))
    gts[0, 3:7, 3:7] = 1
    gts[1, 10:12, 2:14] = 1
    assert M.au_pro(gts.copy(), gts) == pytest.approx(1.0)
    # A map that ranks every defect pixel below every normal one never recovers a region at FPR <= 0.3.
    assert M.au_pro(1.0 - gts, gts) == pytest.approx(0.0)
    # Regions count equally whatever their size: hitting one of two gives PRO 0.5.
    maps = np.zeros_like(gts)
    maps[1, 10:12, 2:14] = 1
    assert M.au_pro(maps, gts) == pytest.approx(0.5, abs=0.02)


def test_binarize_resized_mask_drops_soft_edges() -> None:
    m = np.zeros((1, 1, 8, 8), dtype=np.float32)
    m[0, 0, 2:6, 2:6] = 1
    up = M.binarize_resized_mask(m, 16)
    assert up.shape == (1, 1, 16, 16)
    assert set(np.unique(up)) <= {0.0, 1.0}
    # Bilinear upsampling softens the border: only the interior stays exactly 1.
    assert 0 < up.sum() < 4 * 4 * 4


def test_detection_metrics_perfect_and_nan() -> None:
    gts = torch.zeros(4, 1, 32, 32)
    gts[2, 0, 4:12, 4:12] = 1
    gts[3, 0, 20:28, 10:30] = 1
    out = M.detection_metrics(gts.clone(), gts)
    assert set(out) == set(M.DETECTION_METRICS)
    assert all(v == pytest.approx(1.0) for v in out.values())
    normal_only = M.detection_metrics(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    assert all(np.isnan(v) for v in normal_only.values())


def test_au_pro_agrees_with_anomalib_on_the_same_inputs() -> None:
    """AU-PRO is ours only because its convention (MVTec 3D-AD's 100 thresholds) differs from anomalib's
    exact curve; with 1000 thresholds the two agree to 1e-4, with 100 to 2e-3."""
    aupro = pytest.importorskip("anomalib.metrics.aupro")
    rng = np.random.default_rng(1)
    for trial in range(3):
        gts = np.zeros((6, 64, 64))
        for i in range(5):
            y, x = rng.integers(0, 48, 2)
            gts[i, y:y + rng.integers(3, 16), x:x + rng.integers(3, 16)] = 1
        maps = rng.random((6, 64, 64)) + (0.3 + 0.3 * trial) * gts
        ref = aupro._AUPRO(fpr_limit=0.3)
        ref.update(torch.from_numpy(maps).float(), torch.from_numpy(gts).int())
        theirs = float(ref.compute())
        assert M.au_pro(maps, gts, num_thresholds=1000) == pytest.approx(theirs, abs=1e-4)
        assert M.au_pro(maps, gts) == pytest.approx(theirs, abs=2e-3)
