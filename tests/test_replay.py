"""A written dataset replays byte for byte from its manifest, and a sample's bytes never depend on who asked.

``anoplug generate --replay MANIFEST`` rebuilds every sample from its recorded draws (not
from its seed: the replay of a procedural method would give the same bytes with any seed),
and NSA's sample *i* is the same through the writer, ``anoplug bench`` and the explorer,
because all three build its input with ``anoplug.data.inputs.sample_inputs``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anoplug.cli import main
from anoplug.data import open_dataset
from anoplug.generator import Samples
from anoplug.registry import get_registry
from anoplug.seeding import sample_seed
from anoplug.types import load_image


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("method", ["nsa", "draem", "cutpaste"])
def test_replay_regenerates_the_tree_byte_for_byte(method: str, tmp_path: Path, capsys) -> None:
    extra = ["-p", "probability=1.0"] if method == "draem" else []
    assert main(["generate", method, "--data", "toy:capsule", "-n", "12", "--size", "96", "--out", str(tmp_path / "A"),
                 "-q", "--batch-size", "5", *extra]) == 0
    manifest = tmp_path / "A" / "capsule" / "manifest.jsonl"
    assert main(["generate", "--replay", str(manifest), "--out", str(tmp_path / "B"), "-q"]) == 0
    a, b = _tree(tmp_path / "A"), _tree(tmp_path / "B")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), f"{method}: replayed tree differs"
    if method == "draem":  # DRAEM's Perlin gradients are big draws: they live in side files
        assert any(k.startswith("capsule/draws/") for k in a)


def test_replay_uses_the_records_not_the_seeds(tmp_path: Path) -> None:
    """Edit one recorded draw and the replay follows it: the manifest is the dataset's recipe."""
    assert main(["generate", "cutpaste", "--data", "toy:wood", "-n", "4", "--size", "64", "--out", str(tmp_path / "A"),
                 "-q"]) == 0
    manifest = tmp_path / "A" / "wood" / "manifest.jsonl"
    recs = [json.loads(line) for line in manifest.read_text().splitlines()]
    anomalous = next(r for r in recs if r["mask"])
    for r in recs:
        r["sample_seed"] = 12345  # seeds are not what replay reads
    anomalous["sample"]["dst"] = [0, 0]  # move the pasted patch to the top-left corner
    manifest.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["generate", "--replay", str(manifest), "--out", str(tmp_path / "B"), "-q"]) == 0
    mask = load_image(tmp_path / "B" / "wood" / anomalous["mask"], mode="L")
    ys, xs = np.nonzero(mask)
    assert ys.min() == 0 and xs.min() == 0, "the replay did not follow the edited record"


def test_replay_refuses_a_learned_method_without_weights(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "manifest.jsonl"
    rec = {"method": "bboxdiffusion", "method_version": "0.1.0", "params": {}, "seed": 0, "dataset": "toy:metal@64",
           "data": "toy:metal", "sample": {}, "index": 0}
    manifest.write_text(json.dumps(rec) + "\n")
    assert main(["generate", "--replay", str(manifest), "--out", str(tmp_path / "B")]) == 2
    assert "--load" in capsys.readouterr().err


def test_replay_takes_nothing_else(tmp_path: Path, capsys) -> None:
    assert main(["generate", "nsa", "--replay", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "B")]) == 2
    assert "drop NAME" in capsys.readouterr().err


def test_nsa_sample_bytes_are_the_same_through_writer_bench_and_explorer(tmp_path: Path) -> None:
    pytest.importorskip("ipywidgets")
    bench = pytest.importorskip("anoplug_asbench.bench")
    from anoplug.data.writer import write_generated
    from anoplug.widgets import Explorer

    size, n, seed = 96, 6, 3
    source = open_dataset("toy:capsule", split="train", size=size)
    nsa = get_registry().get_generator("nsa")
    write_generated(nsa, source, tmp_path / "w", n=n, seed=seed, batch_size=4, n_train=0, progress=False)
    written = [load_image(tmp_path / "w" / "capsule" / json.loads(line)["image"])
               for line in (tmp_path / "w" / "capsule" / "manifest.jsonl").read_text().splitlines()]

    cfg = bench.BenchConfig(generators=["nsa"], data=["toy:capsule"], size=size, n_synthetic=n, use_cache=False)
    benched, _, _, _ = bench.generate_set(cfg, "nsa", seed, source.all(), tmp_path / "cache")
    explorer = Explorer(type(nsa), source, n=n, size=size, seed=seed, manual=True)
    explored = explorer.update()
    for i in range(n):
        via_bench = (benched.image[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        via_explorer = (explored.image[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(written[i], via_bench), f"sample {i}: bench differs from the writer"
        assert np.array_equal(written[i], via_explorer), f"sample {i}: the explorer differs from the writer"
        assert explored.meta[i]["seed"] == sample_seed(seed, i)


def test_samples_select_and_stack() -> None:
    s = Samples([{"a": torch.tensor([1.0, 2.0]), "k": 1}, {"a": torch.tensor([3.0, 4.0]), "k": 2}])
    assert s.select([1])[0]["k"] == 2 and isinstance(s[:1], Samples)
    assert s.stack("a").shape == (2, 2) and s.stack("k").tolist() == [1, 2]
