"""Per-sample seeding: sample *i* of a run is seeded from ``(seed, i)`` alone.

That makes the output identical however the work is split (one process, several,
a cluster) and lets a resumed run regenerate exactly the missing samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_MASK63 = (1 << 63) - 1


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run with master ``seed`` (SeedSequence mixing)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & _MASK63


def resolve_seeds(n: int, *, generator: torch.Generator | None = None, seed: int | None = None,
                  seeds: Sequence[int] | None = None) -> list[int]:
    """One seed per sample from exactly one of ``seeds``, ``generator`` or ``seed`` (default 0)."""
    given = sum(x is not None for x in (generator, seed, seeds))
    if given > 1:
        raise ValueError("pass only one of generator=, seed= or seeds=")
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if len(seeds) != n:
            raise ValueError(f"seeds has {len(seeds)} entries for {n} samples")
        return seeds
    if generator is not None:
        return [int(s) for s in torch.randint(0, _MASK63, (n,), generator=generator, dtype=torch.int64)]
    base = 0 if seed is None else int(seed)
    return [sample_seed(base, i) for i in range(n)]


def rngs_for(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One seeded ``torch.Generator`` per sample."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def numpy_rng(seed: int) -> np.random.Generator:
    """A numpy Generator for code that needs numpy draws (seeded, never global)."""
    return np.random.default_rng(int(seed))
