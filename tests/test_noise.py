"""The shared Perlin noise and rotation (used by DRAEM and SuperSimpleNet)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anoplug.noise import perlin_masks, perlin_noise, rotate, sample_gradients, sample_scales


def _draem_reference(shape, res, grads):
    """DRAEM's rand_perlin_2d formula, re-derived in plain numpy with tiled lattice gradients."""
    d = (shape[0] // res[0], shape[1] // res[1])
    fy = (np.arange(shape[0]) % d[0]) / d[0]
    fx = (np.arange(shape[1]) % d[1]) / d[1]
    fy, fx = np.meshgrid(fy, fx, indexing="ij")

    def tile(oy, ox):
        g = grads[oy:oy + res[0], ox:ox + res[1]]
        return np.repeat(np.repeat(g, d[0], 0), d[1], 1)

    def dot(g, sy, sx):
        return (fy + sy) * g[..., 0] + (fx + sx) * g[..., 1]

    n00, n10 = dot(tile(0, 0), 0, 0), dot(tile(1, 0), -1, 0)
    n01, n11 = dot(tile(0, 1), 0, -1), dot(tile(1, 1), -1, -1)
    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3
    ty, tx = fade(fy), fade(fx)
    return math.sqrt(2) * ((n00 * (1 - ty) + ty * n10) * (1 - tx) + tx * (n01 * (1 - ty) + ty * n11))


@pytest.mark.parametrize("res", [(1, 1), (4, 8), (32, 2)])
def test_matches_draem_formula(res):
    g = sample_gradients(torch.Generator().manual_seed(5), res)
    ours = perlin_noise([g], (64, 64))[0].numpy()
    assert np.abs(ours - _draem_reference((64, 64), res, g.numpy())).max() < 1e-5


def test_batched_equals_one_by_one_and_scale_law():
    rngs = [torch.Generator().manual_seed(i) for i in range(12)]
    grads = [sample_gradients(r, sample_scales(r)) for r in rngs]
    together = perlin_noise(grads, (32, 48))
    for i, g in enumerate(grads):
        assert torch.equal(together[i], perlin_noise([g], (32, 48))[0])
    scales = {sample_scales(torch.Generator().manual_seed(i)) for i in range(400)}
    assert {s for pair in scales for s in pair} == {1, 2, 4, 8, 16, 32}


def test_rotation_is_counter_clockwise_and_exact_at_right_angles():
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(rotate(x, torch.tensor([0.0, 0.0])), x)
    assert torch.allclose(rotate(x, torch.tensor([90.0, 90.0])), torch.rot90(x, 1, (2, 3)), atol=1e-6)
    corners = rotate(torch.ones(1, 1, 16, 16), torch.tensor([45.0]))
    assert corners[0, 0, 0, 0] == 0 and corners[0, 0, 8, 8] == 1  # zero fill outside, kept inside


def test_masks_threshold_the_rotated_noise():
    g = [sample_gradients(torch.Generator().manual_seed(1), (4, 4))]
    noise, mask = perlin_masks(g, (32, 32), 0.3, torch.tensor([30.0]))
    assert torch.equal(mask, (noise > 0.3).float()) and 0 < float(mask.mean()) < 1
