"""Where shards run: this process (pipelined), local worker processes, or a Dask cluster.

Each executor is a cheap description; ``executor.session(plan)`` runs one plan and its
``map(shards)`` yields the results in index order with a bounded window in flight. See
:mod:`anoplug.driver` for the design.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain
from typing import Any

import torch

from anoplug.driver.work import DriverError, Plan, Session, Shard, ShardResult, _dumps, _loads, _Worker, torch_threads

__all__ = ["Executor", "InProcess", "LocalProcesses", "DaskExecutor", "default_workers", "make_executor"]

#: seconds a Dask client waits for its scheduler before the run is refused
DASK_CONNECT_TIMEOUT = 20.0


class Executor:
    """Where shards run. A description (cheap, reusable); :meth:`session` runs one plan on it."""

    workers = 1

    def session(self, plan: Plan) -> Session:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class InProcess(Executor):
    """This process: decode (next shard) and encode (last shard) in two threads while this one generates."""

    def __init__(self, *, pipeline: bool = True) -> None:
        self.pipeline = pipeline

    def session(self, plan: Plan) -> Session:
        return _InProcessSession(plan, self.pipeline)

    def describe(self) -> str:
        return "in this process"


class _InProcessSession(Session):
    def __init__(self, plan: Plan, pipeline: bool) -> None:
        self.plan, self.pipeline = plan, pipeline
        self.worker: _Worker | None = None
        self._threads: contextlib.ExitStack | None = None

    def start(self) -> None:
        self._threads = contextlib.ExitStack()
        self._threads.enter_context(torch_threads(self.plan.threads))
        self.worker = _Worker(self.plan)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.close()
            self._threads = None

    def map(self, shards: Iterable[Shard], meanwhile: Callable[[], None] | None = None) -> Iterator[ShardResult]:
        if self.worker is None:
            raise RuntimeError("the session is not started (use it as a context manager)")
        if meanwhile is not None:  # nothing runs beside it here: the source is read by one thread at a time
            meanwhile()
        worker, it = self.worker, iter(shards)
        first = next(it, None)
        if first is None:
            return
        second = next(it, None)
        if not self.pipeline or second is None:  # one shard: nothing to overlap
            for shard in chain((first,), () if second is None else chain((second,), it)):
                yield worker.run(shard)
            return
        decode = ThreadPoolExecutor(1, thread_name_prefix="anoplug-decode")
        encode = ThreadPoolExecutor(1, thread_name_prefix="anoplug-encode")
        done: deque[Future] = deque()
        upcoming: Future | None = None
        try:
            shard: Shard | None = first
            upcoming = decode.submit(worker.inputs, first)
            following: Shard | None = second
            while shard is not None:
                inputs = upcoming.result()
                upcoming = decode.submit(worker.inputs, following) if following is not None else None
                out = worker.generate(shard, inputs)  # here, in this thread: one torch generator per sample
                done.append(encode.submit(worker.finish, shard, inputs, out))
                while done and (len(done) > 1 or done[0].done()):
                    yield done.popleft().result()
                shard, following = following, (next(it, None) if following is not None else None)
            while done:
                yield done.popleft().result()
        finally:
            for f in (upcoming, *done):
                if f is not None:
                    f.cancel()
            decode.shutdown(wait=True, cancel_futures=True)
            encode.shutdown(wait=True, cancel_futures=True)


# local processes: each worker process holds one _Worker
_STATE: dict[str, Any] = {}


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its client (a SIGKILLed client would leave it waiting forever)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _init_local(payload: Any, parent: int) -> None:
    import signal

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle; it stops the workers
    plan = _loads(payload) if isinstance(payload, bytes) else payload
    torch.set_num_threads(plan.threads)
    _STATE["worker"] = _Worker(plan)


def _ready() -> int:
    return os.getpid()


def _run_local(shard: Shard) -> ShardResult:
    return _STATE["worker"].run(shard)


class LocalProcesses(Executor):
    """``workers`` processes on this machine, each with its own model copy and one torch thread.

    ``start_method`` None: ``fork`` on Linux when the model is on the CPU (fast, nothing to
    pickle), else ``spawn`` (the plan is pickled; CUDA cannot be forked).
    """

    def __init__(self, workers: int, *, start_method: str | None = None) -> None:
        if workers < 1:
            raise DriverError(f"--workers must be at least 1, got {workers}")
        self.workers, self.start_method = int(workers), start_method

    def session(self, plan: Plan) -> Session:
        return _LocalSession(plan, self.workers, self.start_method)

    def describe(self) -> str:
        return f"{self.workers} local processes"


class _LocalSession(Session):
    def __init__(self, plan: Plan, workers: int, start_method: str | None) -> None:
        self.plan, self.workers = plan, workers
        self.start_method = start_method or self._default_method(plan)
        self.pool: Any = None

    @staticmethod
    def _default_method(plan: Plan) -> str:
        import multiprocessing as mp

        cuda = (plan.device is not None and torch.device(plan.device).type != "cpu") or \
            getattr(plan.generator, "device", torch.device("cpu")).type != "cpu"
        if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() and not cuda \
                and not torch.cuda.is_initialized():
            return "fork"
        return "spawn"

    def start(self) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        payload = self.plan if self.start_method == "fork" else _dumps(self.plan)
        self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context(self.start_method),
                                        initializer=_init_local, initargs=(payload, os.getpid()))
        try:
            self.pool.submit(_ready).result()  # every worker is forked now (fork launches them all at once)
        except BaseException as e:
            self.close()
            raise _broken(e) from e

    def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def map(self, shards: Iterable[Shard], meanwhile: Callable[[], None] | None = None) -> Iterator[ShardResult]:
        window = 2 * self.workers
        pending: deque[Future] = deque()
        try:
            for shard in shards:
                pending.append(self.pool.submit(_run_local, shard))
                while len(pending) >= window:
                    if meanwhile is not None:
                        meanwhile, later = None, meanwhile
                        later()
                    yield _result(pending.popleft())
            if meanwhile is not None:
                meanwhile()
            while pending:
                yield _result(pending.popleft())
        finally:
            for f in pending:
                f.cancel()


def _broken(e: BaseException) -> BaseException:
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(e, BrokenProcessPool):
        return RuntimeError("a worker process died (killed, or out of memory?); what was finished is kept: "
                            "re-run the same command to resume")
    return e


def _result(f: Future) -> Any:
    try:
        return f.result()
    except BaseException as e:
        err = _broken(e)
        if err is e:
            raise
        raise err from e


class DaskExecutor(Executor):
    """Shards as Dask tasks on the cluster at ``scheduler`` (``tcp://HOST:PORT``), or on a ``LocalCluster`` of
    ``workers`` processes (one thread each) started for the run when ``scheduler`` is None.

    Every worker needs the same anoplug, plugins, torch, numpy and Pillow as the client
    (checked: a mismatch is refused, since it could change bytes) and read access to the
    source data and condition files at the same paths; see ``docs/driver.md``.
    """

    def __init__(self, scheduler: str | None = None, *, workers: int | None = None, timeout: float | None = None) -> None:
        if workers is not None and workers < 1:
            raise DriverError(f"--workers must be at least 1, got {workers}")
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise DriverError("--executor dask needs dask[distributed]: pip install 'anoplug[dask]'")
        self.scheduler = scheduler
        self.timeout = float(DASK_CONNECT_TIMEOUT if timeout is None else timeout)
        self.workers = int(workers or default_workers())

    def session(self, plan: Plan) -> Session:
        from anoplug.driver.cluster import DaskSession

        return DaskSession(plan, scheduler=self.scheduler, workers=self.workers, timeout=self.timeout)

    def describe(self) -> str:
        return f"Dask at {self.scheduler}" if self.scheduler else f"a Dask LocalCluster of {self.workers} workers"


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def make_executor(kind: str | None = None, workers: int | None = None, scheduler: str | None = None, *,
                  n_shards: int | None = None) -> Executor:
    """The executor a command line asks for.

    ``kind`` ``"local"`` (default) or ``"dask"`` (implied by ``scheduler``). Local: ``workers``
    processes (default: this machine's cores), never more than the run has shards; one worker
    runs in this process. Dask: ``workers`` sizes the ``LocalCluster`` started when there is no
    ``scheduler``; an external cluster brings its own workers.
    """
    if workers is not None and workers < 1:
        raise DriverError(f"--workers must be at least 1, got {workers}")
    if kind not in (None, "local", "dask"):
        raise DriverError(f"--executor must be local or dask, got {kind!r}")
    if scheduler is not None:
        if kind == "local":
            raise DriverError("--scheduler names a Dask scheduler: use it with --executor dask (or drop --executor local)")
        if workers is not None:
            raise DriverError("--workers sizes a LocalCluster; the cluster at --scheduler brings its own workers: "
                              "drop --workers")
        if not str(scheduler).strip():
            raise DriverError("--scheduler: empty address (expected tcp://HOST:PORT)")
        return DaskExecutor(scheduler)
    if kind == "dask":
        return DaskExecutor(workers=workers)
    n = default_workers() if workers is None else int(workers)
    if n_shards is not None:
        n = max(1, min(n, int(n_shards)))
    return InProcess() if n == 1 else LocalProcesses(n)


