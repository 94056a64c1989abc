"""The MVTec-layout writer: tree, manifest, resume, refusal to mix runs, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import Field

from anoplug.data.base import DataError
from anoplug.data.toy import ToyDataset
from anoplug.data.writer import JOURNAL, MANIFEST, write_generated
from anoplug.generator import Generator, Paper
from anoplug.params import Params
from anoplug.seeding import sample_seed
from anoplug.types import Batch

# ------------------------------------------------------------------------------------------------
# A tiny deterministic generator (the method plugins are written elsewhere). It darkens or
# brightens one random square per sample; some samples stay normal. ``BOXGEN_DELAY`` (seconds
# per batch) slows it down so a test can kill a run part-way.
# ------------------------------------------------------------------------------------------------


class BoxParams(Params):
    strength: float = Field(0.6, ge=0.0, le=1.0, description="how far the box moves pixels to black or white")
    p_good: float = Field(0.2, ge=0.0, le=1.0, description="probability that a sample stays normal")


class BoxGenerator(Generator):
    name = "boxgen"
    title = "Test box"
    category = "cutpaste"
    paper = Paper("none")
    Params = BoxParams
    preserves_outside_mask = True

    def sample(self, batch: Batch, rngs):
        h, w = batch.size
        out = []
        for g in rngs:
            side = int(torch.randint(max(h // 8, 1), max(h // 3, 2), (1,), generator=g))
            out.append({"y": int(torch.randint(0, h - side, (1,), generator=g)),
                        "x": int(torch.randint(0, w - side, (1,), generator=g)), "side": side,
                        "good": bool(torch.rand(1, generator=g) < self.params.p_good),
                        "kind": ["dark_box", "bright_box"][int(torch.randint(0, 2, (1,), generator=g))]})
        return out

    def apply(self, batch: Batch, samples):
        delay = float(os.environ.get("BOXGEN_DELAY", "0"))
        if delay:
            time.sleep(delay)
        mask = torch.zeros_like(batch.mask)
        bright = torch.zeros(len(batch), 1, 1, 1, dtype=torch.bool)
        for k, s in enumerate(samples):
            if not s["good"]:
                mask[k, :, s["y"]:s["y"] + s["side"], s["x"]:s["x"] + s["side"]] = 1
                bright[k] = s["kind"] == "bright_box"
        target = bright.float().expand_as(batch.image)
        img = ((batch.image + self.params.strength * mask * (target - batch.image)) * 255).round() / 255
        labels = ["good" if s["good"] else s["kind"] for s in samples]
        return Batch(image=img, mask=mask, label=labels, meta=[dict(m) for m in batch.meta])


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _source(size: int = 32) -> ToyDataset:
    return ToyDataset("metal", size=size, length=12)


def test_layout_manifest_and_rerun(tmp_path: Path) -> None:
    src = _source()
    s = write_generated(BoxGenerator(), src, tmp_path, n=20, seed=3, batch_size=6, n_train=5, progress=False)
    root = tmp_path / "metal"
    assert s.root == root and s.written == 20 and s.skipped == 0 and s.manifest == root / MANIFEST
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == [f"{j:06d}.png" for j in range(5)]
    recs = [json.loads(line) for line in s.manifest.read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(20))
    assert sum(s.labels.values()) == 20 and set(s.labels) <= {"good", "dark_box", "bright_box"} and len(s.labels) >= 2
    for r in recs:
        assert r["method"] == "boxgen" and r["seed"] == 3 and r["params"] == BoxGenerator().params.model_dump(mode="json")
        assert r["sample_seed"] == sample_seed(3, r["index"]) and r["source_index"] == r["index"] % len(src)
        assert r["source"] == f"toy:metal/train/{r['index'] % len(src)}" and r["caption"]
        assert r["image"] == f"test/{r['label']}/{r['index']:06d}.png" and (root / r["image"]).is_file()
        assert set(r["sample"]) == {"x", "y", "side", "good", "kind"}
        if r["label"] == "good":
            assert r["mask"] is None
        else:
            m = np.asarray(Image.open(root / r["mask"]))
            assert r["mask"] == f"ground_truth/{r['label']}/{r['index']:06d}_mask.png"
            assert set(np.unique(m)) == {0, 255} and m.shape == (32, 32)
            assert (m == 255).sum() == r["sample"]["side"] ** 2
    assert not (root / JOURNAL).exists() and not list(root.rglob("*.anoplug-tmp"))
    before = _tree(root)
    again = write_generated(BoxGenerator(), src, tmp_path, n=20, seed=3, batch_size=4, n_train=5, progress=False)
    assert again.written == 0 and again.skipped == 20 and again.labels == s.labels
    assert _tree(root) == before


def test_output_independent_of_batch_size_and_extends(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_generated(BoxGenerator(), _source(), a, n=13, seed=7, batch_size=13, progress=False)
    write_generated(BoxGenerator(), _source(), b, n=6, seed=7, batch_size=4, progress=False)
    more = write_generated(BoxGenerator(), _source(), b, n=13, seed=7, batch_size=3, progress=False)
    assert more.written == 7 and more.skipped == 6
    assert _tree(a / "metal") == _tree(b / "metal")


def test_lost_file_is_regenerated(tmp_path: Path) -> None:
    s = write_generated(BoxGenerator(), _source(), tmp_path, n=8, seed=1, progress=False)
    before = _tree(s.root)
    rec = json.loads(s.manifest.read_text().splitlines()[4])
    (s.root / rec["image"]).unlink()
    again = write_generated(BoxGenerator(), _source(), tmp_path, n=8, seed=1, progress=False)
    assert again.written == 1 and _tree(s.root) == before


def test_refuses_to_mix_runs(tmp_path: Path) -> None:
    write_generated(BoxGenerator(), _source(), tmp_path, n=4, seed=0, progress=False)
    with pytest.raises(DataError, match="params"):
        write_generated(BoxGenerator(strength=0.3), _source(), tmp_path, n=4, seed=0, progress=False)
    with pytest.raises(DataError, match="seed"):
        write_generated(BoxGenerator(), _source(), tmp_path, n=4, seed=1, progress=False)
    with pytest.raises(DataError, match="dataset"):
        write_generated(BoxGenerator(), _source(size=48), tmp_path, n=4, seed=0, progress=False)


@pytest.mark.parametrize("kw, match", [({"n": 0}, "n must"), ({"n": 2, "batch_size": 0}, "batch_size"),
                                       ({"n": 2, "seed": -1}, "seed"), ({"n": 2, "n_train": -1}, "n_train")])
def test_bad_arguments(tmp_path: Path, kw: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        write_generated(BoxGenerator(), _source(), tmp_path, progress=False, **kw)


def test_corrupt_manifest_is_named(tmp_path: Path) -> None:
    s = write_generated(BoxGenerator(), _source(), tmp_path, n=3, progress=False)
    s.manifest.write_text(s.manifest.read_text() + "{not json\n")
    with pytest.raises(DataError, match="manifest.jsonl line 4"):
        write_generated(BoxGenerator(), _source(), tmp_path, n=3, progress=False)


_RUN = """
import sys
sys.path.insert(0, {repo!r})
from tests.test_writer import BoxGenerator
from anoplug.data.toy import ToyDataset
from anoplug.data.writer import write_generated
write_generated(BoxGenerator(), ToyDataset("metal", size=32, length=12), sys.argv[1], n=40, seed=5, batch_size=2,
                n_train=6, progress=False)
"""


def test_sigkill_then_resume_is_byte_identical(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    write_generated(BoxGenerator(), _source(), clean, n=40, seed=5, batch_size=8, n_train=6, progress=False)

    killed = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(_RUN.format(repo=str(Path(__file__).resolve().parents[1])))
    env = dict(os.environ, BOXGEN_DELAY="0.25", OMP_NUM_THREADS="1")  # ~5 s of generation left to interrupt
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
    try:
        deadline = time.monotonic() + 180  # importing torch on a busy shared machine can be slow
        while time.monotonic() < deadline and len(list(killed.glob("metal/test/*/*.png"))) < 6:
            assert proc.poll() is None, "the writer finished or died before it could be killed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    written = len(list(killed.glob("metal/test/*/*.png")))
    assert 6 <= written < 40, written
    assert not (killed / "metal" / MANIFEST).exists()  # the manifest only appears when a run completes

    resumed = write_generated(BoxGenerator(), _source(), killed, n=40, seed=5, batch_size=8, n_train=6, progress=False)
    assert 0 < resumed.written < 40 and resumed.written + resumed.skipped == 40
    assert _tree(killed / "metal") == _tree(clean / "metal")


def test_n_train_is_capped_by_the_source(tmp_path: Path) -> None:
    s = write_generated(BoxGenerator(), _source(), tmp_path, n=2, n_train=100, progress=False)
    assert len(list((s.root / "train" / "good").glob("*.png"))) == len(_source())


def test_resume_from_torn_journal_and_leftover_temporaries(tmp_path: Path) -> None:
    """The states a kill can leave, built on purpose: a torn journal line, a temp file, an unjournalled image."""
    clean = write_generated(BoxGenerator(), _source(), tmp_path / "clean", n=6, seed=4, progress=False)
    crashed = write_generated(BoxGenerator(), _source(), tmp_path / "crashed", n=6, seed=4, progress=False)
    lines = crashed.manifest.read_text().splitlines(keepends=True)
    crashed.manifest.unlink()
    (crashed.root / JOURNAL).write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    (crashed.root / "test" / "good" / "000005.png.anoplug-tmp").write_bytes(b"half a png")
    for line in lines[4:]:  # images on disk whose journal lines never made it
        rec = json.loads(line)
        if rec["mask"]:
            (crashed.root / rec["mask"]).unlink()
    resumed = write_generated(BoxGenerator(), _source(), tmp_path / "crashed", n=6, seed=4, progress=False)
    assert resumed.written == 3 and resumed.skipped == 3
    assert _tree(crashed.root) == _tree(clean.root)


def test_nsa_output_does_not_depend_on_chunking(tmp_path):
    """NSA borrows a patch from a second normal image; the writer pairs it per sample."""
    import anoplug
    from anoplug.data import open_dataset
    from anoplug.data.writer import write_generated

    src = open_dataset("toy:fabric", split="train", size=64)
    gen = anoplug.get_generator("nsa", category="fabric")
    a = write_generated(gen, src, tmp_path / "a", n=6, seed=3, batch_size=6, n_train=1, progress=False)
    b = write_generated(gen, src, tmp_path / "b", n=6, seed=3, batch_size=2, n_train=1, progress=False)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*.png"))
    assert files and files == sorted(p.relative_to(b.root) for p in b.root.rglob("*.png"))
    for rel in files:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
