"""The one generation driver: sample *i* of a run is made one way, whoever asks and wherever it runs.

The writer (``anoplug generate``), ``anoplug bench``, the explorer, ``anoplug demo`` and
notebooks all generate through this module, so "sample *i* depends on ``(seed, i)`` alone"
holds for all of them:

- **inputs**: sample *i* reads source image ``i % N``, a paired source ``(i % N + 1) % N``
  for a method that borrows one (``Requires.paired_source``, NSA) and its per-sample
  conditions, all built by :func:`anoplug.data.inputs.sample_inputs`;
- **seed**: ``sample_seed(seed, i)`` (:mod:`anoplug.seeding`), one ``torch.Generator`` per sample;
- **one torch thread** while generating, in every executor: torch reductions split across
  threads round differently (NSA's output at 2 threads differs from 1 in the last bit), so
  the thread count is part of the bytes; the parallelism comes from processes instead;
- **chunking never changes a byte**: indices are cut into *shards* of ``batch_size``, and a
  shard's output is the concatenation of its samples' outputs whatever the cut.

A run is a :class:`Plan` (generator, source, seed, conditions, device; picklable) and a stream
of :class:`Shard` s. Each shard goes through decode (build its inputs) → generate → encode
(PNG, the draws side file, the manifest fields; or the in-memory :class:`~anoplug.types.Batch`
for bench and the explorer), and the results come back **in index order** with at most a
window of shards in flight, so memory stays bounded whatever ``-n`` is. Executors:

- :class:`InProcess` (notebooks, tiny runs): decode of the next shard and encode of the last
  one run in two threads while this thread generates: the three stages overlap.
- :class:`LocalProcesses` (``--workers N``): N processes, each with its own copy of the
  model and one torch thread, doing decode, generate and encode; on Linux they are forked
  (no re-import, no pickling) when the model is on the CPU, spawned otherwise. They start
  before the writer takes the output lock (none of them ever holds it) and die with their
  client (``PR_SET_PDEATHSIG``); a dead worker stops the run, which then resumes.
- :class:`DaskExecutor` (``--executor dask [--scheduler tcp://HOST:PORT]``): shards are Dask
  tasks (see :mod:`anoplug.driver.cluster`); without a scheduler a ``LocalCluster`` is started.

**Tasks stream their results back; only the client writes.** A shard's result is its
encoded files and manifest fields (≈ 0.1 MB per 256² sample), returned to the client, which
writes them atomically and journals them under the output lock. The alternative — tasks
writing into ``--out`` — would need a file system shared by every worker, and would let a
task outlive its client: a worker the scheduler presumed dead, or the tasks of a killed
client, could still write into a directory that another run has locked meanwhile. With
streaming, the one process holding the lock is the one process writing; a task that runs
twice (its worker was killed) is harmless because only one of its results is ever written;
and the resume journal is the writer's, the same for every executor. The cost is the result
bytes crossing the network once, small next to the time to make them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from anoplug.data.base import Dataset
from anoplug.data.inputs import InMemoryDataset
from anoplug.driver.executors import DaskExecutor, Executor, InProcess, LocalProcesses, default_workers, make_executor
from anoplug.driver.work import (
    SOURCE_CACHE_BYTES,
    CachedSource,
    DriverError,
    Encoded,
    Finished,
    FixedConditions,
    Plan,
    Session,
    Shard,
    ShardResult,
    dataset_id,
    draws_bytes,
    png_bytes,
    safe_label,
    shards,
)
from anoplug.types import Batch

__all__ = ["Plan", "Shard", "Encoded", "ShardResult", "Finished", "Session", "Executor", "InProcess", "LocalProcesses",
           "DaskExecutor", "CachedSource", "FixedConditions", "DriverError", "make_executor", "default_workers",
           "run_samples", "generate_batch", "shards", "n_shards", "safe_label", "png_bytes", "draws_bytes", "dataset_id",
           "SOURCE_CACHE_BYTES"]


# -- the public entry points --------------------------------------------------------------------------------------------
def run_samples(generator: Any, source: Dataset, indices: Iterable[int], *, seed: int = 0, conditions: Any = None,
                device: str | None = None, batch_size: int = 16, encode: bool = False,
                executor: Executor | None = None, replay: Callable[[list[int]], list] | None = None,
                threads: int = 1) -> Iterator[Finished]:
    """Make samples ``indices`` of the run ``(generator, source, seed, conditions)``, yielded in that order.

    ``indices`` is consumed lazily (a ``range(10**9)`` is fine). ``encode=True`` yields each
    sample's files and manifest fields (what the writer writes), else a one-sample
    :class:`Batch`. ``replay(indices)`` gives recorded draws to replay instead of drawing.
    ``threads``: torch threads while generating (part of the bytes: keep 1 to match ``anoplug generate``).
    """
    plan = Plan(generator, source, seed=seed, conditions=conditions, device=device, encode=encode, threads=threads)
    with (executor or InProcess()).session(plan) as session:
        for res in session.map(shards(indices, batch_size, replay)):
            for k, i in enumerate(res.indices):
                yield Finished(index=i, seed=res.seeds[k], source_index=res.source_indices[k],
                               output=None if res.output is None else res.output[[k]],
                               fields=None if res.encoded is None else res.encoded[k].fields,
                               files=None if res.encoded is None else res.encoded[k].files)


def generate_batch(generator: Any, source: Dataset | Batch, indices: Iterable[int], *, seed: int = 0,
                   conditions: Any = None, device: str | None = None, batch_size: int = 16,
                   executor: Executor | None = None, threads: int = 1) -> Batch:
    """Samples ``indices`` as one :class:`Batch`, the bytes the writer writes for them (bench, explorer, demo).

    ``source`` may be a dataset or a :class:`Batch` of normals; ``conditions`` a
    :class:`~anoplug.data.inputs.ConditionSource` or a dict of ``Batch.with_conditions``
    keywords for exactly these ``indices`` (a :class:`FixedConditions`). ``threads``: torch
    threads while generating (part of the bytes: keep 1 to match ``anoplug generate``).
    """
    idx = [int(i) for i in indices]
    if not idx:
        raise DriverError("generate_batch: no sample indices")
    if isinstance(source, Batch):
        source = InMemoryDataset(source)
    if isinstance(conditions, dict):
        conditions = FixedConditions(conditions, idx)
    plan = Plan(generator, source, seed=seed, conditions=conditions, device=device, encode=False, threads=threads)
    with (executor or InProcess()).session(plan) as session:
        parts = [res.output for res in session.map(shards(idx, batch_size))]
    return parts[0] if len(parts) == 1 else Batch.cat(parts, common_extras=True)


def n_shards(n: int, batch_size: int) -> int:
    """How many shards ``n`` samples make at ``batch_size``."""
    return max(1, math.ceil(n / max(1, batch_size)))
