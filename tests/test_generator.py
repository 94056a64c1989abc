"""Generator base: seeding rules and safe, clear persistence errors."""

from __future__ import annotations

import pytest
import torch
from anoplug_draem.draem import Draem

from anoplug.seeding import resolve_seeds, sample_seed
from anoplug.testing import make_toy_batch


def test_sample_seed_depends_on_seed_and_index_only():
    assert sample_seed(0, 5) == sample_seed(0, 5)
    assert len({sample_seed(0, i) for i in range(1000)} | {sample_seed(1, i) for i in range(1000)}) == 2000
    assert resolve_seeds(3, seed=7) == [sample_seed(7, i) for i in range(3)]
    with pytest.raises(ValueError, match="only one"):
        resolve_seeds(2, seed=1, seeds=[1, 2])
    with pytest.raises(ValueError, match="2 entries for 3"):
        resolve_seeds(3, seeds=[1, 2])


def test_generator_argument_gives_reproducible_seeds():
    g = Draem(texture_source="perlin", probability=1.0)
    b = make_toy_batch(2, 32)
    a = g.generate(b, generator=torch.Generator().manual_seed(3))
    c = g.generate(b, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.image, c.image) and [m["seed"] for m in a.meta] == [m["seed"] for m in c.meta]


def test_load_errors_name_the_file(tmp_path):
    g = Draem(texture_source="perlin")
    g.save(tmp_path / "ok")
    assert Draem.load(tmp_path / "ok").params == g.params
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Draem.load(tmp_path / "missing")
    (tmp_path / "ok" / "weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="weights.safetensors"):
        Draem.load(tmp_path / "ok")
    (tmp_path / "ok" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt .*config.json"):
        Draem.load(tmp_path / "ok")
    (tmp_path / "ok" / "config.json").write_text('{"name": "nsa", "params": {}}')
    with pytest.raises(ValueError, match="holds generator 'nsa'"):
        Draem.load(tmp_path / "ok")
