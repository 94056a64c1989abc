"""The Dask executor (issue 14): the bytes of one process, a SIGKILLed worker, a killed client, two clients.

One ``LocalCluster`` on loopback (two worker processes, one thread each, nannies that restart
a killed worker) serves the module; every test is bounded in time. ``BOXGEN_DELAY`` slows
the workers' test generator so a run lasts long enough to be interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from anoplug.cli import main  # noqa: E402
from anoplug.data.base import DataError  # noqa: E402
from anoplug.data.toy import ToyDataset  # noqa: E402
from anoplug.data.writer import JOURNAL, LOCK, MANIFEST, write_generated  # noqa: E402
from anoplug.driver import DaskExecutor, DriverError  # noqa: E402
from tests.test_writer import BoxGenerator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    env = {"BOXGEN_DELAY": "0.08", "OMP_NUM_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR, env=env) as c:
        yield c


def _client(cluster):
    from distributed import Client

    return Client(cluster.scheduler_address, set_as_default=False)


def _ready(cluster, n: int = 2) -> dict[str, int]:
    """Worker address -> pid, once ``n`` workers are up (a killed one is restarted by its nanny)."""
    with _client(cluster) as c:
        c.wait_for_workers(n, timeout=90)
        return c.run(os.getpid)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _source() -> ToyDataset:
    return ToyDataset("metal", size=32, length=12)


def _images(out: Path) -> int:
    return len(list(out.glob("metal/test/*/*.png")))


def _clean(tmp_path: Path, n: int, seed: int) -> Path:
    return write_generated(BoxGenerator(), _source(), tmp_path / "clean", n=n, seed=seed, batch_size=8, n_train=4,
                           progress=False).root


def _in_thread(fn):
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _wait_for(out: Path, count: int, alive, deadline: float) -> None:
    while _images(out) < count:
        assert time.monotonic() < deadline and alive(), "the run finished or failed before it could be interrupted"
        time.sleep(0.01)


def test_dask_writes_the_bytes_of_one_process(cluster, tmp_path: Path) -> None:
    _ready(cluster)
    clean = _clean(tmp_path, 24, 3)
    s = write_generated(BoxGenerator(), _source(), tmp_path / "dask", n=24, seed=3, batch_size=2, n_train=4,
                        progress=False, executor=DaskExecutor(cluster.scheduler_address))
    assert s.written == 24 and "Dask at tcp://127.0.0.1" in s.line()
    assert _tree(s.root) == _tree(clean)


def test_a_sigkilled_worker_mid_run_loses_and_duplicates_nothing(cluster, tmp_path: Path) -> None:
    """The issue's test: kill one of two workers mid-run; every index is there once, byte-identical to one process."""
    n = 60
    pids = _ready(cluster)
    clean = _clean(tmp_path, n, 5)
    out = tmp_path / "dask"
    t, box = _in_thread(lambda: write_generated(BoxGenerator(), _source(), out, n=n, seed=5, batch_size=2, n_train=4,
                                                progress=False, executor=DaskExecutor(cluster.scheduler_address)))
    _wait_for(out, 8, t.is_alive, time.monotonic() + 90)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    at_kill = _images(out)
    t.join(timeout=100)
    assert not t.is_alive(), "the run did not finish after a worker was killed"
    assert "error" not in box, box.get("error")
    assert at_kill < n, "the worker was killed after the run had written everything"
    summary = box["value"]
    recs = [json.loads(line) for line in (summary.root / MANIFEST).read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(n))  # every index, once, in order
    assert summary.written == n and _tree(summary.root) == _tree(clean)
    assert victim not in _ready(cluster).values()  # it really died; its nanny started a fresh worker


def test_a_second_client_on_the_same_out_is_refused(cluster, tmp_path: Path) -> None:
    _ready(cluster)
    n = 40
    out = tmp_path / "D"
    t, box = _in_thread(lambda: write_generated(BoxGenerator(), _source(), out, n=n, seed=2, batch_size=2, n_train=4,
                                                progress=False, executor=DaskExecutor(cluster.scheduler_address)))
    _wait_for(out, 2, t.is_alive, time.monotonic() + 90)
    with pytest.raises(DataError, match="being written by this same run already") as same:
        write_generated(BoxGenerator(), _source(), out, n=n, seed=2, batch_size=2, n_train=4, progress=False,
                        executor=DaskExecutor(cluster.scheduler_address))
    with pytest.raises(DataError, match=r"being written by another run: boxgen seed 2 .*refusing to mix") as other:
        write_generated(BoxGenerator(), _source(), out, n=n, seed=7, batch_size=2, n_train=4, progress=False,
                        executor=DaskExecutor(cluster.scheduler_address))
    assert "\n" not in str(same.value) + str(other.value)
    t.join(timeout=100)
    assert "error" not in box, box.get("error")
    assert _tree(out / "metal") == _tree(_clean(tmp_path, n, 2))  # the refused clients changed nothing


_CLIENT = """
import sys
sys.path.insert(0, {repo!r})
from tests.test_writer import BoxGenerator
from anoplug.data.toy import ToyDataset
from anoplug.data.writer import write_generated
from anoplug.driver import DaskExecutor
write_generated(BoxGenerator(), ToyDataset("metal", size=32, length=12), sys.argv[1], n=80, seed=6, batch_size=2,
                n_train=4, progress=False, executor=DaskExecutor(sys.argv[2]))
"""


def test_killing_the_client_mid_run_then_rerunning_resumes(cluster, tmp_path: Path) -> None:
    _ready(cluster)
    out = tmp_path / "killed"
    script = tmp_path / "client.py"
    script.write_text(_CLIENT.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), str(out), cluster.scheduler_address],
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        _wait_for(out, 8, lambda: proc.poll() is None, time.monotonic() + 100)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _images(out) < 80 and not (out / "metal" / MANIFEST).exists() and (out / "metal" / JOURNAL).exists()
    resumed = write_generated(BoxGenerator(), _source(), out, n=80, seed=6, batch_size=2, n_train=4, progress=False,
                              executor=DaskExecutor(cluster.scheduler_address))
    assert resumed.skipped > 0 and resumed.written + resumed.skipped == 80
    assert _tree(out / "metal") == _tree(_clean(tmp_path, 80, 6)) and not (out / "metal" / LOCK).exists()


def test_cli_dask_with_a_scheduler_matches_one_process(cluster, tmp_path: Path, capsys) -> None:
    """``anoplug generate draem ... --executor dask --scheduler ADDRESS``: a real plugin, draws side files, the bar."""
    _ready(cluster)
    argv = ["generate", "draem", "--data", "toy:metal", "-n", "40", "--size", "32", "--batch-size", "4",
            "-p", "probability=0.7"]
    assert main([*argv, "--out", str(tmp_path / "one"), "--workers", "1", "-q"]) == 0
    assert main([*argv, "--out", str(tmp_path / "dask"), "--executor", "dask", "--scheduler",
                 cluster.scheduler_address]) == 0
    out, err = capsys.readouterr()
    assert "wrote 40 new samples (0 already present)" in out and "images/s" in out and "img/s" in err  # one bar
    assert _tree(tmp_path / "dask") == _tree(tmp_path / "one")


def test_cli_dask_starts_its_own_local_cluster(tmp_path: Path, capsys, monkeypatch) -> None:
    argv = ["generate", "nsa", "--data", "toy:capsule", "-n", "12", "--size", "32", "--batch-size", "3", "-q"]
    assert main([*argv, "--out", str(tmp_path / "one"), "--workers", "1"]) == 0
    assert main([*argv, "--out", str(tmp_path / "dask"), "--executor", "dask", "--workers", "1"]) == 0
    assert "a Dask LocalCluster of 1 workers" in capsys.readouterr().out
    assert _tree(tmp_path / "dask") == _tree(tmp_path / "one")
    import anoplug.driver.cluster as dc

    def no_cluster(*a, **k):
        raise AssertionError("a finished run started a cluster")

    monkeypatch.setattr(dc, "LocalCluster", no_cluster)
    assert main([*argv, "--out", str(tmp_path / "dask"), "--executor", "dask", "--workers", "1"]) == 0
    assert "wrote 0 new samples (12 already present)" in capsys.readouterr().out


def test_an_unreachable_scheduler_exits_2_before_writing(tmp_path: Path, capsys, monkeypatch) -> None:
    import anoplug.driver.executors as executors

    monkeypatch.setattr(executors, "DASK_CONNECT_TIMEOUT", 2.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "o"
    code = main(["generate", "draem", "--data", "toy:metal", "-n", "4", "--size", "32", "--out", str(out),
                 "--scheduler", f"tcp://127.0.0.1:{port}", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"--scheduler tcp://127.0.0.1:{port}: cannot reach the Dask scheduler" in err[0]
    assert not out.exists()


def test_a_worker_with_other_versions_refuses_the_plan() -> None:
    from anoplug.driver import Plan
    from anoplug.driver.cluster import PlanPlugin, versions
    from anoplug.driver.work import _dumps

    gen = BoxGenerator()
    plan = Plan(gen, _source(), seed=0, encode=True)
    expected = dict(versions(gen), torch="0.0-elsewhere")
    plugin = PlanPlugin("p", _dumps(plan), expected, 1)
    with pytest.raises(RuntimeError, match=r"environment differs from the client's \(torch .* here, 0.0-elsewhere on"):
        plugin.setup(None)
    PlanPlugin("p", _dumps(plan), versions(gen), 1).setup(None)  # the same versions: accepted
    with pytest.raises(DriverError, match="--workers must be at least 1"):
        DaskExecutor(workers=0)
