"""The one generation driver (issue 14): the same bytes whoever asks, wherever it runs, in bounded memory.

Writer, bench, explorer and demo all make sample *i* through :mod:`anoplug.driver`; these
tests pin that they agree byte for byte (NSA's paired source included), that the executor
(this process, local worker processes) and the chunking never change a byte, that results
come back in index order with a bounded window, and that the writer's memory is flat in
``n`` (the manifest is streamed). Dask: ``tests/test_dask.py``.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import anoplug
from anoplug.cli import main
from anoplug.data import open_dataset
from anoplug.data.base import Dataset
from anoplug.data.toy import ToyDataset
from anoplug.data.writer import JOURNAL, LOCK, MANIFEST, write_generated
from anoplug.driver import CachedSource, DriverError, InProcess, LocalProcesses, Shard, generate_batch, make_executor, run_samples
from anoplug.seeding import sample_seed
from anoplug.types import load_image, to_uint8
from tests.test_writer import BoxGenerator

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _source(size: int = 32) -> ToyDataset:
    return ToyDataset("metal", size=size, length=12)


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]


def _gen(name: str):
    return anoplug.get_generator(name, **{"draem": {"probability": 1.0}, "hybrid": {"members": "draem,nsa"}}.get(name, {}))


# ------------------------------------------------------------------------------------------------
# one sample, one set of bytes: writer, bench, explorer (and the executors)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["nsa", "draem", "cutpaste", "hybrid"])
def test_writer_bench_and_explorer_make_the_same_bytes(method: str, tmp_path: Path) -> None:
    """Sample i of (generator, source, seed) is one image and one mask, through every driver user."""
    pytest.importorskip("ipywidgets")
    bench = pytest.importorskip("anoplug_asbench.bench")
    from anoplug.widgets import Explorer

    size, n, seed = 48, 6, 4
    source = open_dataset("toy:capsule", split="train", size=size)  # objects: NSA pastes inside the object mask
    gen = _gen(method)
    a = write_generated(gen, source, tmp_path / "a", n=n, seed=seed, batch_size=4, n_train=0, progress=False)
    b = write_generated(gen, source, tmp_path / "b", n=n, seed=seed, batch_size=1, n_train=0, progress=False,
                        executor=LocalProcesses(2))
    assert _tree(a.root) == _tree(b.root), "two local workers wrote other bytes than this process"
    recs = _records(a.root)
    written = [load_image(a.root / r["image"]) for r in recs]
    masks = [load_image(a.root / r["mask"], mode="L") if r["mask"] else np.zeros((size, size), np.uint8) for r in recs]

    cfg = bench.BenchConfig(generators=[method], data=["toy:capsule"], size=size, n_synthetic=n, use_cache=False,
                            generator_params={method: gen.params.model_dump(mode="json")})
    benched, _, _, _ = bench.generate_set(cfg, method, seed, source.all(), tmp_path / "cache")
    explored = Explorer(type(gen), source, n=n, size=size, seed=seed, manual=True, fixed=gen.params.model_dump()).update()
    for name, got in (("bench", benched), ("explorer", explored)):
        images, got_masks = to_uint8(got.image), to_uint8(got.mask)[..., 0]
        for i in range(n):
            assert np.array_equal(written[i], images[i]), f"{method} sample {i}: {name} image differs from the writer's"
            assert np.array_equal(masks[i], np.where(got_masks[i] >= 128, 255, 0)), f"{method} sample {i}: {name} mask"
            assert safe(got.label[i]) == recs[i]["label"]
    assert [m["seed"] for m in explored.meta] == [sample_seed(seed, i) for i in range(n)]


def safe(label: str) -> str:
    from anoplug.driver import safe_label

    return safe_label(label)


def test_chunking_and_order_never_change_a_byte() -> None:
    """Any cut of the indices, any order asked: sample i is the same tensor; results follow the order asked."""
    src = open_dataset("toy:fabric", split="train", size=32)
    gen = _gen("nsa")
    whole = generate_batch(gen, src, range(9), seed=2, batch_size=9)
    for bs in (1, 4):
        assert torch.equal(generate_batch(gen, src, range(9), seed=2, batch_size=bs).image, whole.image)
    asked = [7, 2, 5, 0]
    got = list(run_samples(gen, src, asked, seed=2, batch_size=3))
    assert [f.index for f in got] == asked and [f.seed for f in got] == [sample_seed(2, i) for i in asked]
    assert [f.source_index for f in got] == [i % len(src) for i in asked]
    for f in got:
        assert torch.equal(f.output.image[0], whole.image[f.index])


class _Jittery(BoxGenerator):
    """Shards take unequal time (a worker finishes them out of order)."""

    name = "jittery"

    def apply(self, batch, samples):
        time.sleep(0.03 * (int(batch.meta[0]["source"].rsplit("/", 1)[1]) % 3))
        return super().apply(batch, samples)


def test_local_workers_yield_in_index_order_with_a_bounded_window() -> None:
    consumed = []

    def indices():
        for i in range(40):
            consumed.append(i)
            yield i

    seen, ahead = [], 0
    for f in run_samples(_Jittery(), _source(), indices(), seed=1, batch_size=2, encode=True,
                         executor=LocalProcesses(2)):
        seen.append(f.index)
        ahead = max(ahead, len(consumed) - len(seen))
    assert seen == list(range(40))
    assert ahead <= 2 * 2 * 2 + 2, f"{ahead} samples were taken ahead of the consumer (window: 2 shards per worker)"


def test_executors_and_start_methods_write_the_same_tree(tmp_path: Path) -> None:
    gen = _gen("draem")  # big draws: side files travel too
    src = open_dataset("toy:metal", split="train", size=32)
    ref = write_generated(gen, src, tmp_path / "ref", n=10, seed=9, batch_size=3, n_train=2, progress=False,
                          executor=InProcess(pipeline=False))
    for name, ex in (("pipelined", InProcess()), ("forked", LocalProcesses(2)),
                     ("spawned", LocalProcesses(2, start_method="spawn"))):
        s = write_generated(gen, src, tmp_path / name, n=10, seed=9, batch_size=2, n_train=2, progress=False, executor=ex)
        assert s.written == 10 and _tree(s.root) == _tree(ref.root), name


def test_one_torch_thread_while_generating_and_restored_after() -> None:
    seen = []

    class Counting(BoxGenerator):
        def apply(self, batch, samples):
            seen.append(torch.get_num_threads())
            return super().apply(batch, samples)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generate_batch(Counting(), _source(), range(6), seed=0, batch_size=2)
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# decode once, memory flat in n
# ------------------------------------------------------------------------------------------------
class _Counting(Dataset):
    def __init__(self, inner: Dataset) -> None:
        self.inner, self.calls = inner, []
        self.scheme, self.category, self.size, self.split = inner.scheme, inner.category, inner.size, inner.split

    def __len__(self) -> int:
        return len(self.inner)

    def batch(self, indices):
        self.calls += list(indices)
        return self.inner.batch(indices)


def test_each_source_image_is_decoded_once_and_caching_changes_nothing() -> None:
    src = _Counting(_source())
    cached = [f.files for f in run_samples(_gen("nsa"), src, range(40), seed=3, encode=True)]
    assert sorted(src.calls) == list(range(12)), "a normal was decoded more than once"
    plain = _Counting(_source())
    uncached = [f.files for f in run_samples(_gen("nsa"), CachedSource(plain, max_bytes=0), range(40), seed=3,
                                             encode=True)]
    assert len(plain.calls) > 40 and cached == uncached


def _peak(fn) -> int:
    gc.collect()  # garbage of earlier tests must not count towards this peak
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writer_memory_is_flat_in_n(tmp_path: Path) -> None:
    """The manifest is streamed: 10x the samples, the same peak (the old writer held every record: ~4 MB more)."""
    src = ToyDataset("metal", size=16, length=4)
    write_generated(BoxGenerator(), src, tmp_path / "warm", n=8, progress=False)  # imports and caches outside
    write_generated(BoxGenerator(), src, tmp_path / "warm", n=16, progress=False)  # ... the resume path's too
    gc.collect()

    def run(n: int, out: str) -> None:
        write_generated(BoxGenerator(), src, tmp_path / out, n=n, seed=1, batch_size=16, n_train=0, progress=False)

    small = _peak(lambda: run(300, "small"))
    big = _peak(lambda: run(3000, "big"))
    assert big - small < 1 * 2**20, f"peak {small / 2**20:.2f} MiB at n=300, {big / 2**20:.2f} MiB at n=3000"
    resumed = _peak(lambda: run(3300, "big"))  # a resume reads 3000 records back: still flat
    assert resumed - small < 1 * 2**20, f"resume peak {resumed / 2**20:.2f} MiB"
    recs = _records(tmp_path / "big" / "metal")
    assert [r["index"] for r in recs] == list(range(3300))


# ------------------------------------------------------------------------------------------------
# local workers: killed worker, killed client (no orphans, the lock is free), bad flags
# ------------------------------------------------------------------------------------------------
class _DiesInAWorker(BoxGenerator):
    """SIGKILLs the worker process that makes sample 9 (never the process that built it); else a BoxGenerator."""

    parent = 0

    def apply(self, batch, samples):
        if os.getpid() != self.parent and any("/9" == m["source"][-2:] for m in batch.meta):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().apply(batch, samples)


def test_a_killed_local_worker_stops_the_run_and_it_resumes(tmp_path: Path) -> None:
    clean = write_generated(BoxGenerator(), _source(), tmp_path / "clean", n=24, seed=2, batch_size=2, progress=False)
    gen = _DiesInAWorker()
    gen.parent = os.getpid()
    with pytest.raises(RuntimeError, match="a worker process died .*re-run the same command to resume"):
        write_generated(gen, _source(), tmp_path / "d", n=24, seed=2, batch_size=2, progress=False,
                        executor=LocalProcesses(2))
    root = tmp_path / "d" / "metal"
    assert not (root / LOCK).exists() and not (root / MANIFEST).exists()
    again = write_generated(BoxGenerator(), _source(), tmp_path / "d", n=24, seed=2, batch_size=5, progress=False)
    assert again.written + again.skipped == 24 and _tree(root) == _tree(clean.root)


_CLIENT = """
import sys
sys.path.insert(0, {repo!r})
from tests.test_writer import BoxGenerator
from anoplug.data.toy import ToyDataset
from anoplug.data.writer import write_generated
from anoplug.driver import LocalProcesses
write_generated(BoxGenerator(), ToyDataset("metal", size=32, length=12), sys.argv[1], n=60, seed=5, batch_size=2,
                n_train=4, progress=False, executor=LocalProcesses(2))
"""


def test_killing_the_client_kills_its_workers_and_frees_the_lock(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "killed"
    script = tmp_path / "client.py"
    script.write_text(_CLIENT.format(repo=str(REPO)))
    env = dict(os.environ, BOXGEN_DELAY="0.15", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
    workers = []
    try:
        deadline = time.monotonic() + 180
        while len(list(out.glob("metal/test/*/*.png"))) < 6:
            assert time.monotonic() < deadline and proc.poll() is None, "the client finished or died before the kill"
            time.sleep(0.02)
        workers = psutil.Process(proc.pid).children()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert len(workers) == 2, workers
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, f"workers outlived their client: {alive}"
    assert len(list(out.glob("metal/test/*/*.png"))) < 60 and not (out / "metal" / MANIFEST).exists()
    # the lock went with the client (no worker held it): the re-run is not refused and resumes to the same bytes
    resumed = write_generated(BoxGenerator(), _source(), out, n=60, seed=5, batch_size=4, n_train=4, progress=False)
    clean = write_generated(BoxGenerator(), _source(), tmp_path / "clean", n=60, seed=5, batch_size=8, n_train=4,
                            progress=False)
    assert resumed.skipped > 0 and _tree(out / "metal") == _tree(clean.root)
    assert not (out / "metal" / JOURNAL).exists()


def test_make_executor_defaults_and_refusals() -> None:
    assert isinstance(make_executor(workers=1), InProcess)
    assert isinstance(make_executor(workers=4, n_shards=1), InProcess)  # never more workers than shards
    ex = make_executor(workers=3, n_shards=10)
    assert isinstance(ex, LocalProcesses) and ex.workers == 3
    for kw, needle in (({"workers": 0}, "--workers must be at least 1"),
                       ({"kind": "local", "scheduler": "tcp://h:1"}, "use it with --executor dask"),
                       ({"workers": 2, "scheduler": "tcp://h:1"}, "drop --workers"),
                       ({"kind": "spark"}, "--executor must be local or dask")):
        with pytest.raises(DriverError, match=needle):
            make_executor(**kw)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, needle", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "drop --workers"),
    (["--executor", "local", "--scheduler", "tcp://127.0.0.1:1"], "use it with --executor dask"),
])
def test_bad_executor_flags_exit_2_with_one_line(tmp_path: Path, capsys, argv, needle) -> None:
    code, _, err = run(capsys, "generate", "draem", "--data", "toy:metal", "-n", 4, "--size", 32, "--out",
                       tmp_path / "o", *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "o").exists()


def test_cli_workers_summary_and_quiet(tmp_path: Path, capsys) -> None:
    argv = ["generate", "cutpaste", "--data", "toy:wood", "-n", 20, "--size", 32, "--batch-size", 4]
    code, out, err = run(capsys, *argv, "--workers", 2, "--out", tmp_path / "w", "-q")
    assert code == 0 and err == "", err  # --quiet: no bar
    line = out.splitlines()[0]
    assert line.startswith("wrote 20 new samples (0 already present) to ") and " s (" in line and "images/s" in line
    assert "2 local processes" in line
    code, out, _ = run(capsys, *argv, "--workers", 1, "--out", tmp_path / "one", "-q")
    assert code == 0 and "in this process" in out
    assert _tree(tmp_path / "w") == _tree(tmp_path / "one")
    code, out, err = run(capsys, *argv, "--out", tmp_path / "w")  # a bar on stderr only when there is work
    assert code == 0 and "wrote 0 new samples (20 already present)" in out


def test_replay_with_local_workers_is_byte_identical(tmp_path: Path, capsys) -> None:
    assert run(capsys, "generate", "nsa", "--data", "toy:capsule", "-n", 10, "--size", 48, "--batch-size", 3,
               "--workers", 1, "--out", tmp_path / "A", "-q")[0] == 0
    code, out, err = run(capsys, "generate", "--replay", tmp_path / "A" / "capsule" / MANIFEST, "--workers", 2, "--batch-size", 3,
                         "--out", tmp_path / "B", "-q")
    assert code == 0, err
    assert out.startswith("replayed 10 samples (0 already present)") and "2 local processes" in out
    assert _tree(tmp_path / "A") == _tree(tmp_path / "B")


def test_demo_runs_procedural_generators_only() -> None:
    """The demo takes seconds: no method that needs weights (AnoStyler's CLIP + VGG, a diffusion base) or a condition."""
    from anoplug.cli import demo_generators
    from anoplug.registry import get_registry

    names = demo_generators(get_registry())
    assert {"draem", "cutpaste", "nsa"} <= set(names)
    for name in names:
        r = get_registry().generator_class(name).requires
        assert not (r.fit or r.weights or r.conditions or r.depth), name
    assert not {"anostyler", "anomalyany"} & set(names)


def test_demo_sheet_shows_the_samples_it_wrote(tmp_path: Path, capsys, monkeypatch) -> None:
    from anoplug import viz

    shown = {}
    real = viz.contact_sheet

    def capture(results, *a, **k):
        shown.update(results)
        return real(results, *a, **k)

    monkeypatch.setattr(viz, "contact_sheet", capture)
    code, out, err = run(capsys, "demo", "--out", tmp_path, "-n", 5, "--size", 32, "--category", "capsule")
    assert code == 0, err
    assert {"draem", "cutpaste", "nsa"} <= set(shown)
    for name, (_, generated) in shown.items():
        root = tmp_path / name / "capsule"
        recs = _records(root)
        for i in range(4):
            assert np.array_equal(load_image(root / recs[i]["image"]), to_uint8(generated.image)[i]), (name, i)


def test_shard_of_replayed_draws_travels(tmp_path: Path) -> None:
    """``Shard.samples`` replays recorded draws in a worker process (what --replay sends)."""
    gen = _gen("cutpaste")
    src = _source()
    first = generate_batch(gen, src, range(4), seed=1)
    moved = [dict(s) for s in first.samples]
    replayed = list(run_samples(gen, src, range(4), seed=99, batch_size=4, executor=LocalProcesses(2),
                                replay=lambda idx: [moved[i] for i in idx]))
    for f in replayed:
        assert torch.equal(f.output.image[0], first.image[f.index])
    assert isinstance(Shard([1], None), Shard)
