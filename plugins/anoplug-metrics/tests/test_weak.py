"""AnoGen's weak box supervision as an option of the DRAEM pipeline: each test fails when its mechanism is removed."""

from __future__ import annotations

import torch
from anoplug_metrics.detector import focal_loss
from anoplug_metrics.pipelines import SyntheticSet, resolve_config, train_pipeline
from anoplug_metrics.pipelines.draem import draem_loss
from anoplug_metrics.weak import focal_loss_map, weak_focal_loss, weak_loss_mask


def _logits_with_prob(prob: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose softmax gives anomaly probability ``prob``."""
    return torch.cat([torch.zeros_like(prob), torch.log(prob / (1 - prob))], 1).requires_grad_(True)


def test_in_box_pixels_not_yet_scored_anomalous_get_no_gradient():
    """Inside the box: a pixel at p <= p_cutoff is ignored, one above it is supervised; outside the box every pixel is.
    Catches the mask being dropped (every box pixel supervised) or applied outside the box."""
    prob = torch.full((1, 1, 4, 4), 0.05)
    prob[..., 0, 0] = 0.3  # inside the box, already scored anomalous
    box = torch.zeros(1, 1, 4, 4)
    box[..., :2, :2] = 1
    logits = _logits_with_prob(prob)
    (grad,) = torch.autograd.grad(weak_focal_loss(logits, box, 2.0, 0.1), logits)
    g = grad.abs().sum(1)[0]
    assert float(g[0, 0]) > 0  # in the box, p = 0.3 > 0.1: supervised
    assert float(g[0, 1]) == float(g[1, 0]) == float(g[1, 1]) == 0  # in the box, p = 0.05: ignored
    assert bool((g[2:, :] > 0).all()) and bool((g[:, 2:] > 0).all())  # outside the box: supervised
    assert torch.equal(weak_loss_mask(prob, box, 0.1)[0, 0], (g > 0).float())


def test_without_a_cutoff_it_is_draem_focal_loss_and_the_map_means_to_it():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 2, 8, 8, generator=g), (torch.rand(2, 1, 8, 8, generator=g) > 0.7).float()
    assert torch.allclose(focal_loss_map(logits, target).mean(), focal_loss(logits, target))
    assert torch.allclose(weak_focal_loss(logits, target, 2.0, -1.0), focal_loss(logits, target))


def test_draem_pipeline_takes_the_weak_option():
    """``weak_p_cutoff`` reaches DRAEM's loss (the focal term changes) and its training; None keeps DRAEM as it was."""
    g = torch.Generator().manual_seed(1)
    rec, clean = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    logits, box = torch.randn(2, 2, 32, 32, generator=g), torch.zeros(2, 1, 32, 32)
    box[..., 8:24, 8:24] = 1
    plain, weak = draem_loss(rec, clean, logits, box, 2.0), draem_loss(rec, clean, logits, box, 2.0, 0.1)
    assert torch.equal(plain["focal"], focal_loss(logits, box)) and float(weak["focal"]) < float(plain["focal"])
    assert resolve_config("draem").weak_p_cutoff is None and resolve_config("draem", weak_p_cutoff=0.1).weak_p_cutoff == 0.1
    normals = torch.rand(4, 3, 32, 32, generator=g)
    syn = SyntheticSet(normals.flip(-1), box[:1].expand(4, -1, -1, -1).contiguous(), normals)
    kw = {"steps": 2, "batch_size": 2, "size": 32, "scale": "cpu", "seed": 0, "anomaly_prob": 1.0}
    # an untrained network scores ~0.5 everywhere: a cutoff of 0.9 leaves the box's pixels unsupervised
    a, b = train_pipeline("draem", normals, syn, **kw), train_pipeline("draem", normals, syn, weak_p_cutoff=0.9, **kw)
    assert a.history[0]["focal"] > b.history[0]["focal"] and b.config["weak_p_cutoff"] == 0.9
