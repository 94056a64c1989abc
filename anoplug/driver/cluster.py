"""The Dask executor of :mod:`anoplug.driver`: shards of indices as tasks, results streamed back in order.

The plan (generator, source, seed, conditions) reaches the workers once, as a worker plugin
registered with the scheduler: the scheduler gives it to every worker, including one that
joins or is restarted later (after a SIGKILL, its nanny starts a fresh one), and each worker
thread unpickles it once — its own model copy, one torch thread. A task carries only its
indices and returns the shard's encoded files and manifest fields; the client, which holds
the output lock, writes them (why: :mod:`anoplug.driver`). When a worker dies, the scheduler
reruns its tasks elsewhere; the client takes exactly one result per shard, in index order,
with a bounded window of tasks in flight.

A worker whose anoplug, method, torch, numpy, Pillow or zlib version differs from the
client's refuses the plan (the bytes could differ). Importing this module imports
``distributed``; :mod:`anoplug.driver` imports it only for ``--executor dask``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any

from distributed import Client, LocalCluster, WorkerPlugin, get_worker

from anoplug.driver.work import DriverError, Plan, Session, Shard, ShardResult, _dumps, _loads, _Worker

__all__ = ["DaskSession", "PlanPlugin", "versions"]


def versions(generator: Any) -> dict[str, str]:
    """What decides a sample's bytes besides the plan: the same on the client and every worker."""
    import zlib

    import numpy
    import PIL
    import torch

    from anoplug._version import __version__

    return {"anoplug": __version__, f"{generator.name} (method)": str(generator.version), "torch": torch.__version__,
            "numpy": numpy.__version__, "pillow": PIL.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION}


def restore_malloc() -> None:
    """Undo what Dask's nanny does to glibc's allocator in its workers.

    The nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` to every worker (to hand memory back to
    the OS); setting any malloc threshold turns glibc's dynamic mmap threshold off, so every
    tensor over 128 KB becomes a fresh ``mmap`` with its page faults. Measured on DRAEM at 256²
    (one shard = decode + generate + encode): 20.1 ms CPU per image with the nanny's setting,
    9.4 with this, 9.7 in a plain process. This puts glibc's own steady state back: ``mmap``
    above 32 MiB, trim above 64 MiB (what its dynamic adjustment reaches). Linux/glibc only.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 2**20)  # M_TRIM_THRESHOLD


class PlanPlugin(WorkerPlugin):
    """Carries one run's plan to every worker; each worker thread builds its own generator from it once."""

    def __init__(self, name: str, payload: bytes, expected: dict[str, str], threads: int) -> None:
        self.name, self.payload, self.expected, self.threads = name, payload, expected, threads

    def setup(self, worker: Any) -> None:
        restore_malloc()
        self._local = threading.local()
        self.state()  # fail now (a missing plugin, other versions), not in the first task

    def state(self) -> _Worker:
        st = getattr(self._local, "state", None)
        if st is None:
            import torch

            torch.set_num_threads(self.threads)
            try:
                plan = _loads(self.payload)
            except Exception as e:  # e.g. ModuleNotFoundError: the method's plugin is not installed here
                raise RuntimeError(f"this Dask worker cannot load the run's generator ({type(e).__name__}: {e}); "
                                   "install the same anoplug and plugins on every worker (docs/driver.md)") from e
            have = versions(plan.generator)
            diff = [f"{k} {have.get(k)} here, {v} on the client" for k, v in self.expected.items() if have.get(k) != v]
            if diff:
                raise RuntimeError(f"this Dask worker's environment differs from the client's ({'; '.join(diff)}); "
                                   "the bytes could differ: install the same versions everywhere (docs/driver.md)")
            st = self._local.state = _Worker(plan)
        return st


def run_shard(name: str, shard: Shard) -> ShardResult:
    """The task: make one shard with this worker's copy of plan ``name``."""
    plugin = get_worker().plugins.get(name)
    if plugin is None:
        raise RuntimeError(f"this Dask worker has no plan {name!r} (its client has gone?)")
    return plugin.state().run(shard)


class DaskSession(Session):
    """One plan on a Dask cluster (``scheduler``) or on a ``LocalCluster`` started for it."""

    def __init__(self, plan: Plan, *, scheduler: str | None, workers: int, timeout: float) -> None:
        self.plan, self.scheduler, self.n_workers, self.timeout = plan, scheduler, workers, timeout
        self.client: Client | None = None
        self.cluster: LocalCluster | None = None
        self.name = f"anoplug-plan-{plan.token}"
        self._registered = False

    @property
    def workers(self) -> int:
        """Worker threads of the cluster once connected (what the progress bar shows), else those asked for."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                return max(1, sum(self.client.nthreads().values()))
        return self.n_workers

    def start(self) -> None:
        if self.scheduler is not None:  # connect now: a wrong address fails before anything is written
            self._connect()

    def _connect(self) -> None:
        if self.client is not None:
            return
        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout=self.timeout, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as e:
                raise DriverError(f"--scheduler {self.scheduler}: cannot reach the Dask scheduler ({_one_line(e)}); "
                                  "is dask-scheduler running there?") from e
        else:
            env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
            # loopback only, any free port (the dashboard's HTTP server too): a shared machine's 8787 may be taken
            self.cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
                                        silence_logs=logging.ERROR, env=env)
            self.client = Client(self.cluster, set_as_default=False)
        plugin = PlanPlugin(self.name, _dumps(self.plan), versions(self.plan.generator), self.plan.threads)
        try:
            self.client.register_plugin(plugin, name=self.name)
        except Exception as e:
            raise RuntimeError(f"the Dask workers refused the plan: {_one_line(e)}") from e
        self._registered = True

    def close(self) -> None:
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        if client is not None:
            if self._registered:
                with contextlib.suppress(Exception):
                    client.unregister_worker_plugin(self.name)
                self._registered = False
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()

    def map(self, shards: Iterable[Shard], meanwhile: Callable[[], None] | None = None) -> Iterator[ShardResult]:
        it = iter(shards)
        first = next(it, None)
        if first is None:  # nothing to make (a finished run): no cluster to start
            if meanwhile is not None:
                meanwhile()
            return
        shards = chain((first,), it)
        self._connect()
        client = self.client
        threads = sum(client.nthreads().values())
        window = max(4, 2 * threads)
        pending: deque[Any] = deque()
        try:
            for shard in shards:
                key = f"{self.name}-{shard.indices[0]}-{len(pending)}-{os.urandom(3).hex()}"
                pending.append(client.submit(run_shard, self.name, shard, key=key, pure=False))
                while len(pending) >= window:
                    if meanwhile is not None:
                        meanwhile, later = None, meanwhile
                        later()
                    yield _take(pending.popleft())
            if meanwhile is not None:
                meanwhile()
            while pending:
                yield _take(pending.popleft())
        finally:
            if pending:
                with contextlib.suppress(Exception):
                    client.cancel(list(pending))


def _take(future: Any) -> ShardResult:
    try:
        return future.result()
    finally:
        future.release()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
