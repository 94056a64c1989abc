"""The writer under concurrency, hostile paths, interruptions and big runs (issue 13).

Each test here reproduces a way the writer used to mix, lose or half-write a dataset:
two runs into one ``--out``, an ``--out`` inside the source tree, ``-n`` materialised in
memory, a torn journal interrupted again, train copies of another ``--size``, stray
files, empty files, a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anoplug.data import files, open_dataset, outlock
from anoplug.data import writer as W
from anoplug.data.base import DataError
from anoplug.data.inputs import ConditionSource
from anoplug.data.toy import ToyDataset
from anoplug.data.writer import JOURNAL, LOCK, MANIFEST, estimate_output_bytes, write_generated
from tests.test_writer import BoxGenerator

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _source(size: int = 32) -> ToyDataset:
    return ToyDataset("metal", size=size, length=12)


def _identity(gen: BoxGenerator, seed: int, source: ToyDataset) -> dict:
    return json.loads(json.dumps({"method": gen.name, "method_version": gen.version,
                                  "params": gen.params.model_dump(mode="json"), "seed": seed,
                                  "dataset": W._dataset_id(source), "conditions": None}))


class Interrupting(BoxGenerator):
    """Raises KeyboardInterrupt (Ctrl-C) once ``batches_left`` batches are done; None: never."""

    batches_left: int | None = None

    def apply(self, batch, samples):
        if self.batches_left is not None:
            if self.batches_left <= 0:
                raise KeyboardInterrupt
            self.batches_left -= 1
        return super().apply(batch, samples)


def _interrupting(batches: int | None) -> Interrupting:
    g = Interrupting()
    g.batches_left = batches
    return g


class Failing(BoxGenerator):
    def apply(self, batch, samples):
        raise RuntimeError("boom")


class Stop(Exception):
    pass


class StopAtOnce(BoxGenerator):
    def apply(self, batch, samples):
        raise Stop


class DrawsBox(BoxGenerator):
    """BoxGenerator whose records also hold a 100-value tensor (it goes to a draws side file)."""

    name = "drawsbox"

    def sample(self, batch, rngs):
        recs = super().sample(batch, rngs)
        for r, g in zip(recs, rngs):
            r["noise"] = torch.rand(100, generator=g)
        return recs

    def apply(self, batch, samples):
        return super().apply(batch, [{k: v for k, v in s.items() if k != "noise"} for s in samples])


# ------------------------------------------------------------------------------------------------
# 1. two runs into one --out never mix
# ------------------------------------------------------------------------------------------------
_RACER = """
import pathlib, sys, time
sys.path.insert(0, {repo!r})
from tests.test_writer import BoxGenerator
from anoplug.data.base import DataError
from anoplug.data.toy import ToyDataset
from anoplug.data.writer import write_generated
out, seed, ready, go = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
src = ToyDataset("metal", size=32, length=12)
ready.write_text("ready")
while not go.exists():
    time.sleep(0.005)
try:
    s = write_generated(BoxGenerator(), src, out, n=24, seed=seed, batch_size=2, n_train=4, progress=False)
except DataError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
print("wrote", s.written)
"""


@pytest.mark.parametrize("start", ["together", "second-mid-run"])
def test_two_processes_into_one_out_never_mix(tmp_path: Path, start: str) -> None:
    """The issue's reproduction with real processes: one run is refused, naming the other; nothing mixes."""
    out = tmp_path / "D"
    script = tmp_path / "racer.py"
    script.write_text(_RACER.format(repo=str(REPO)))
    env = dict(os.environ, BOXGEN_DELAY="0.3", OMP_NUM_THREADS="1")  # 12 batches: ~4 s of writing
    procs = {}
    for seed in (0, 1):
        procs[seed] = subprocess.Popen([sys.executable, str(script), str(out), str(seed), str(tmp_path / f"ready{seed}"),
                                        str(tmp_path / f"go{seed}")], env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240  # importing torch twice on a busy shared machine can be slow
        while not all((tmp_path / f"ready{s}").exists() for s in (0, 1)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values())
            time.sleep(0.02)
        if start == "together":
            (tmp_path / "go0").write_text("go")
            (tmp_path / "go1").write_text("go")
        else:  # the order: the second starts while the first is writing samples
            (tmp_path / "go0").write_text("go")
            while len(list(out.glob("metal/test/*/*.png"))) < 3:
                assert time.monotonic() < deadline and procs[0].poll() is None
                time.sleep(0.01)
            (tmp_path / "go1").write_text("go")
        results = {s: p.communicate(timeout=240) for s, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = {s: p.returncode for s, p in procs.items()}
    assert sorted(codes.values()) == [0, 2], (codes, results)
    winner = next(s for s, c in codes.items() if c == 0)
    loser = 1 - winner
    if start == "second-mid-run":
        assert winner == 0
    msg = results[loser][1].strip().splitlines()[-1]
    assert f"boxgen seed {winner}" in msg and f"pid {procs[winner].pid}" in msg and "another run" in msg, msg

    root = out / "metal"
    recs = [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(24)) and {r["seed"] for r in recs} == {winner}
    described = {r[k] for r in recs for k in ("image", "mask") if r[k]}
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*.png") if not p.is_relative_to(root / "train")}
    assert on_disk == described  # no stray sample of the loser
    assert not list(root.rglob("*.anoplug-tmp")) and not (root / LOCK).exists() and not (root / JOURNAL).exists()

    clean = write_generated(BoxGenerator(), _source(), tmp_path / "clean", n=24, seed=winner, batch_size=5,
                            n_train=4, progress=False)
    assert _tree(root) == _tree(clean.root)  # exactly one run's bytes
    before = _tree(root)
    again = write_generated(BoxGenerator(), _source(), out, n=24, seed=winner, batch_size=2, n_train=4, progress=False)
    assert again.written == 0 and again.skipped == 24 and _tree(root) == before


def test_second_writer_is_refused_naming_the_first(tmp_path: Path) -> None:
    src = _source()
    root = tmp_path / "metal"
    root.mkdir()
    other = outlock.OutputLock(root, _identity(BoxGenerator(), 9, src))
    with other:  # a run of seed 9 holds the directory (flock: a second open file conflicts, even in one process)
        info = json.loads((root / LOCK).read_text())
        assert {info[k] for k in ("method", "seed", "pid", "host")} == {"boxgen", 9, os.getpid(), socket.gethostname()}
        assert info["started"] and info["params"] == BoxGenerator().params.model_dump(mode="json")
        with pytest.raises(DataError, match=rf"another run: boxgen seed 9 on .*pid {os.getpid()}") as e:
            write_generated(BoxGenerator(), src, tmp_path, n=3, seed=0, progress=False)
        assert "\n" not in str(e.value)
        assert _listing(root) == [LOCK]  # refused before writing anything
    same = outlock.OutputLock(root, _identity(BoxGenerator(), 0, src))
    with same:  # the same run twice at once is refused too (the simple, safe choice)
        with pytest.raises(DataError, match="this same run already"):
            write_generated(BoxGenerator(), src, tmp_path, n=3, seed=0, progress=False)
    assert not (root / LOCK).exists()
    s = write_generated(BoxGenerator(), src, tmp_path, n=3, seed=0, progress=False)
    assert s.written == 3 and not (root / LOCK).exists()


@pytest.mark.parametrize("fault", ["keyboard-interrupt", "error"])
def test_lock_is_released_on_interrupt_and_error(tmp_path: Path, fault: str) -> None:
    gen = _interrupting(1) if fault == "keyboard-interrupt" else Failing()
    with pytest.raises(KeyboardInterrupt if fault == "keyboard-interrupt" else RuntimeError):
        write_generated(gen, _source(), tmp_path, n=6, seed=2, batch_size=2, progress=False)
    root = tmp_path / "metal"
    assert not (root / LOCK).exists() and not list(root.rglob("*.anoplug-tmp"))
    s = write_generated(BoxGenerator(), _source(), tmp_path, n=6, seed=2, batch_size=2, progress=False)
    assert s.written + s.skipped == 6 and not (root / LOCK).exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _stale_lock(root: Path, pid: int, host: str | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    info = dict(_identity(BoxGenerator(), 7, _source()), pid=pid, host=host or socket.gethostname(),
                started="2020-01-01T00:00:00+00:00")
    (root / LOCK).write_text(json.dumps(info))


def test_stale_lock_file_is_taken_over(tmp_path: Path) -> None:
    """A run killed by SIGKILL leaves its lock file; the kernel dropped its flock, so the file is stale."""
    _stale_lock(tmp_path / "metal", _dead_pid())
    s = write_generated(BoxGenerator(), _source(), tmp_path, n=3, seed=0, progress=False)
    assert s.written == 3 and not (tmp_path / "metal" / LOCK).exists()


def test_without_flock_a_lock_of_a_gone_pid_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_flock(fd: int) -> bool:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(outlock, "_flock", no_flock)
    root = tmp_path / "metal"
    _stale_lock(root, _dead_pid())  # gone on this host: stale, taken over
    assert write_generated(BoxGenerator(), _source(), tmp_path, n=2, seed=0, progress=False).written == 2
    assert not (root / LOCK).exists()
    _stale_lock(root, os.getppid())  # alive: refused, naming it and how to clear a stale one
    with pytest.raises(DataError, match=rf"boxgen seed 7 .*pid {os.getppid()}.*remove .*{LOCK}"):
        write_generated(BoxGenerator(), _source(), tmp_path, n=2, seed=0, progress=False)
    _stale_lock(root, _dead_pid(), host="another-host.example")  # another host's pid cannot be checked
    with pytest.raises(DataError, match="on another-host.example"):
        write_generated(BoxGenerator(), _source(), tmp_path, n=2, seed=0, progress=False)
    (root / LOCK).unlink()
    with outlock.OutputLock(root, _identity(BoxGenerator(), 0, _source())):
        with pytest.raises(DataError, match="this same run already"):
            write_generated(BoxGenerator(), _source(), tmp_path, n=2, seed=0, progress=False)
    assert not (root / LOCK).exists()


# ------------------------------------------------------------------------------------------------
# 2. --out inside (or equal to, or around) the source tree is refused
# ------------------------------------------------------------------------------------------------
def _mvtec(cat: Path) -> Path:
    rng = np.random.default_rng(0)
    for rel in ("train/good/000.png", "train/good/001.png", "train/good/002.png", "test/good/000.png",
                "test/crack/000.png"):
        (cat / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(cat / rel)
    (cat / "ground_truth" / "crack").mkdir(parents=True)
    m = np.zeros((24, 20), np.uint8)
    m[4:9, 3:8] = 255
    Image.fromarray(m).save(cat / "ground_truth" / "crack" / "000_mask.png")
    return cat


@pytest.mark.parametrize("where", ["dataset-root", "category", "split", "symlink", "contains-source"])
def test_out_in_the_source_tree_is_refused(tmp_path: Path, where: str) -> None:
    """``--data mvtec:ds/bottle --out ds`` used to write generated files into the real dataset."""
    if where == "contains-source":
        cat = _mvtec(tmp_path / "o" / "bottle" / "src" / "bottle")
        out = tmp_path / "o"  # writes o/bottle/, which holds the source
    else:
        cat = _mvtec(tmp_path / "ds" / "bottle")
        out = {"dataset-root": tmp_path / "ds", "category": cat, "split": cat / "train",
               "symlink": tmp_path / "link"}[where]
        if where == "symlink":
            out.symlink_to(tmp_path / "ds", target_is_directory=True)
    source = open_dataset(f"mvtec:{cat}", split="train", size=32)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    listing = _listing(tmp_path)
    with pytest.raises(DataError, match="output folder .* the source dataset .*choose an --out outside it"):
        write_generated(BoxGenerator(), source, out, n=3, progress=False)
    assert _listing(tmp_path) == listing and {p: p.read_bytes() for p in before} == before  # nothing written
    ok = write_generated(BoxGenerator(), source, tmp_path / "elsewhere", n=3, n_train=2, progress=False)
    assert ok.written == 3 and ok.root == tmp_path / "elsewhere" / "bottle"


def test_out_around_condition_inputs_is_refused(tmp_path: Path) -> None:
    masks = tmp_path / "out" / "metal" / "masks"
    masks.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "a.png")
    with pytest.raises(DataError, match="contains the --masks folder"):
        W._refuse_output_in_inputs(tmp_path / "out" / "metal", _source(), ConditionSource(masks=masks))
    W._refuse_output_in_inputs(tmp_path / "other" / "metal", _source(), ConditionSource(masks=masks))


# ------------------------------------------------------------------------------------------------
# 3. bounds: indices are streamed; an estimate for the disk check
# ------------------------------------------------------------------------------------------------
def test_indices_are_streamed_not_materialised(tmp_path: Path) -> None:
    """``-n 10**12`` used to build the list of every index first (MemoryError); memory must be O(batch)."""
    write_generated(BoxGenerator(), _source(), tmp_path / "warm", n=2, progress=False)  # imports done outside
    n = 3_000_000  # the old list of pending indices alone: ~100 MB
    tracemalloc.start()
    try:
        with pytest.raises(Stop):
            write_generated(StopAtOnce(), _source(), tmp_path / "big", n=n, batch_size=4, n_train=0, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB for n={n}"
    assert not (tmp_path / "big" / "metal" / LOCK).exists()


def test_estimate_output_bytes(tmp_path: Path) -> None:
    s = write_generated(BoxGenerator(), ToyDataset("fabric", size=64, length=12), tmp_path, n=12, seed=0,
                        batch_size=6, n_train=4, progress=False)
    used = sum(-(-p.stat().st_size // 4096) * 4096 for p in s.root.rglob("*") if p.is_file())
    est = estimate_output_bytes(12, 64, n_train=4)
    assert used <= est <= 4 * used, (used, est)
    assert estimate_output_bytes(10**12, 256) > 10**17  # arithmetic only, for any n
    assert estimate_output_bytes(0, 256) == 0
    with pytest.raises(ValueError):
        estimate_output_bytes(-1, 256)


# ------------------------------------------------------------------------------------------------
# 4. runners-up: torn journal interrupted again, train copies of another size, half-written state
# ------------------------------------------------------------------------------------------------
def _tear(journal: Path, fraction: float) -> None:
    """Cut the journal's last line part-way (what a kill during its write leaves)."""
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    last = len(data) - start
    journal.write_bytes(data[:start + max(0, min(last - 1, int(last * fraction)))])


@pytest.mark.parametrize("fraction", [0.5, 0.02, 0.999])  # mid-record, at its start, just its newline missing
def test_torn_journal_then_a_second_interruption_resumes(tmp_path: Path, fraction: float) -> None:
    clean = write_generated(BoxGenerator(), _source(), tmp_path / "clean", n=12, seed=4, batch_size=2,
                            progress=False)
    out = tmp_path / "crashed"
    root = out / "metal"
    with pytest.raises(KeyboardInterrupt):
        write_generated(_interrupting(2), _source(), out, n=12, seed=4, batch_size=2, progress=False)
    for round_ in range(3):  # tear, resume, interrupt again — any number of times
        _tear(root / JOURNAL, fraction)
        with pytest.raises(KeyboardInterrupt):
            write_generated(_interrupting(1), _source(), out, n=12, seed=4, batch_size=2, progress=False)
        assert not (root / MANIFEST).exists(), round_
    resumed = write_generated(BoxGenerator(), _source(), out, n=12, seed=4, batch_size=2, progress=False)
    assert resumed.written + resumed.skipped == 12
    assert _tree(root) == _tree(clean.root)


def test_journal_glued_by_an_older_writer_resumes(tmp_path: Path) -> None:
    """A journal with a torn line in the middle (an old writer appended to a torn tail) is not fatal."""
    clean = write_generated(BoxGenerator(), _source(), tmp_path / "clean", n=8, seed=6, progress=False)
    crashed = write_generated(BoxGenerator(), _source(), tmp_path / "crashed", n=8, seed=6, progress=False)
    lines = crashed.manifest.read_text().splitlines(keepends=True)
    crashed.manifest.unlink()
    (crashed.root / JOURNAL).write_text("".join(lines[:3]) + lines[3][:40] + "".join(lines[4:6]))
    resumed = write_generated(BoxGenerator(), _source(), tmp_path / "crashed", n=8, seed=6, progress=False)
    assert resumed.skipped == 4 and resumed.written == 4  # lines 0-2 and 5 kept; the glued one made again
    assert _tree(crashed.root) == _tree(clean.root)


@pytest.mark.parametrize("journal", ["kept", "lost"])
def test_failed_runs_train_copies_are_not_reused_by_another_size(tmp_path: Path, journal: str) -> None:
    (tmp_path / "metal").mkdir()  # a directory that existed before (a fresh one is removed on failure, below)
    with pytest.raises(RuntimeError, match="boom"):
        write_generated(Failing(), _source(size=64), tmp_path, n=4, n_train=3, progress=False)
    root = tmp_path / "metal"
    assert Image.open(root / "train" / "good" / "000000.png").size == (64, 64)
    if journal == "lost":  # e.g. a tree left by an older anoplug: only the copies tell
        (root / JOURNAL).unlink()
    match = "dataset differ" if journal == "kept" else "000000.png is 64x64 but this run copies normals at 32x32"
    with pytest.raises(DataError, match=match):
        write_generated(BoxGenerator(), _source(size=32), tmp_path, n=4, n_train=3, progress=False)
    assert not list(root.rglob("test/*/*.png"))
    again = write_generated(BoxGenerator(), _source(size=64), tmp_path, n=4, n_train=3, progress=False)
    assert again.written == 4  # the same size resumes as before


def test_a_refused_run_never_cleans_up_the_run_that_holds_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs see a fresh folder; the one refused by the lock must not remove what the holder wrote."""
    root, held = tmp_path / "out" / "metal", {}

    def winner_starts_first(path: Path) -> None:  # between the loser's "is it fresh?" and its lock
        path.mkdir(parents=True, exist_ok=True)
        held["lock"] = outlock.OutputLock(path, _identity(BoxGenerator(), 9, _source())).__enter__()
        (path / "train").mkdir()
        (path / "train" / "winner.png").write_bytes(b"the winner's")

    monkeypatch.setattr(W, "make_dir", winner_starts_first)
    with pytest.raises(DataError, match="another run"):
        write_generated(BoxGenerator(), _source(), tmp_path / "out", n=2, seed=0, progress=False)
    assert (root / "train" / "winner.png").read_bytes() == b"the winner's" and (root / LOCK).exists()
    held["lock"].release()


def test_a_run_that_fails_before_its_first_sample_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        write_generated(Failing(), _source(size=64), tmp_path / "out", n=4, n_train=3, progress=False)
    assert not (tmp_path / "out").exists(), "a failed fresh run left files behind"
    again = write_generated(BoxGenerator(), _source(size=32), tmp_path / "out", n=4, n_train=3, progress=False)
    assert again.written == 4 and Image.open(again.root / "train" / "good" / "000000.png").size == (32, 32)


def test_stray_files_of_an_interrupted_run_are_removed(tmp_path: Path) -> None:
    """Files written before their journal line (a kill mid-batch) must not outlive a shorter re-run."""
    clean = write_generated(BoxGenerator(), _source(), tmp_path / "clean", n=10, seed=8, progress=False)
    crashed = write_generated(BoxGenerator(), _source(), tmp_path / "crashed", n=20, seed=8, progress=False)
    lines = crashed.manifest.read_text().splitlines(keepends=True)
    crashed.manifest.unlink()
    (crashed.root / JOURNAL).write_text("".join(lines[:7]))  # 7..19 on disk, never journalled
    (crashed.root / "test" / "notes.txt").write_text("the user's")  # not a sample file: kept
    resumed = write_generated(BoxGenerator(), _source(), tmp_path / "crashed", n=10, seed=8, progress=False)
    assert resumed.written == 3 and resumed.skipped == 7
    tree = _tree(crashed.root)
    assert tree.pop("test/notes.txt") == b"the user's"
    assert tree == _tree(clean.root)


def test_empty_or_missing_side_files_are_made_again(tmp_path: Path) -> None:
    """A zero-byte image (a crash between rename and data) or a lost draws file is not a finished sample."""
    s = write_generated(DrawsBox(), _source(), tmp_path, n=6, seed=1, progress=False)
    before = _tree(s.root)
    recs = [json.loads(line) for line in s.manifest.read_text().splitlines()]
    assert all(r["draws"] for r in recs)
    (s.root / recs[1]["image"]).write_bytes(b"")
    (s.root / recs[4]["draws"]).unlink()
    again = write_generated(DrawsBox(), _source(), tmp_path, n=6, seed=1, progress=False)
    assert again.written == 2 and _tree(s.root) == before


class _FullDisk:
    """``os`` as the writer sees it, with ``replace`` failing like a full disk after ``ok`` calls."""

    def __init__(self, ok: int) -> None:
        self.ok = ok

    def replace(self, a, b):
        if self.ok <= 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(b))
        self.ok -= 1
        return os.replace(a, b)

    def __getattr__(self, name):
        return getattr(os, name)


def test_full_disk_is_one_clear_error_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean = write_generated(BoxGenerator(), _source(), tmp_path / "clean", n=8, seed=3, batch_size=3, progress=False)
    full = _FullDisk(ok=18)  # header, 12 copies, 5 sample files
    monkeypatch.setattr(W, "os", full)
    monkeypatch.setattr(files, "os", full)  # the atomic writes live there
    with pytest.raises(DataError, match="No space left on device.*the disk is full"):
        write_generated(BoxGenerator(), _source(), tmp_path / "full", n=8, seed=3, batch_size=3, progress=False)
    monkeypatch.undo()
    root = tmp_path / "full" / "metal"
    assert not list(root.rglob("*.anoplug-tmp")) and not (root / LOCK).exists()
    resumed = write_generated(BoxGenerator(), _source(), tmp_path / "full", n=8, seed=3, batch_size=3, progress=False)
    assert resumed.written > 0 and _tree(root) == _tree(clean.root)
