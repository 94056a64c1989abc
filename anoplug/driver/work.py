"""The work of a run, one shard at a time: the plan, its inputs, generation and the bytes of each sample.

Everything here runs where the shard runs (this process, a worker process, a Dask worker):
:class:`Plan` is what travels, :class:`Shard` a piece of the work, :class:`ShardResult`
what comes back. See :mod:`anoplug.driver` for the rules and the executors.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
from PIL import Image

from anoplug.data.base import Dataset
from anoplug.data.inputs import InMemoryDataset, sample_inputs, source_indices
from anoplug.seeding import sample_seed
from anoplug.serial import pack
from anoplug.types import GOOD, Batch, to_uint8

__all__ = ["Plan", "Shard", "Encoded", "ShardResult", "Finished", "Session", "CachedSource", "FixedConditions",
           "DriverError", "shards", "safe_label", "png_bytes", "draws_bytes", "dataset_id", "torch_threads",
           "SOURCE_CACHE_BYTES"]

#: decoded source images each worker keeps (the first ones asked for, up to this many bytes): a run of n
#: samples over N normals decodes each normal once instead of n / N times
SOURCE_CACHE_BYTES = 256 * 2**20
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class DriverError(ValueError):
    """A run that cannot be executed as asked (bad executor settings, an unreachable scheduler); one line."""


# -- encoding: the bytes of a finished sample ----------------------------------------------------------------------
def safe_label(label: str) -> str:
    """Labels become directory names: keep letters, digits, ``_ . -`` and nothing that escapes."""
    return _SAFE.sub("_", str(label)).strip("._") or "anomaly"


def png_bytes(arr: np.ndarray) -> bytes:
    """Lossless PNG; zlib level 3 encodes ~2.5x faster than PIL's default 6 for ~15 % more bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def draws_bytes(store: dict) -> bytes:
    """The safetensors side file of a sample's big draws (tensors over 64 values)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in sorted(store.items())})


def dataset_id(source: Dataset) -> str:
    """``scheme:category@size``: what a run's identity records of its source."""
    return f"{source.scheme or type(source).__name__}:{source.category}@{source.size}"


def _caption(out: Batch, src: Batch, k: int, label: str, method: str) -> str:
    """The generator's caption if it wrote one; the source's for a normal; else a plain one."""
    if out.text is not None and (src.text is None or out.text[k] != src.text[k] or label == GOOD):
        return out.text[k]
    if label == GOOD and src.text is not None:
        return src.text[k]
    kind = "" if label == safe_label(method) else f"{label.replace('_', ' ')} "
    return f"a synthetic {kind}anomaly made by {method}"


# -- what travels -------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Everything a worker needs to make any sample of a run (picklable: it travels to workers).

    ``encode=True`` makes files (PNG image, PNG mask, draws side file) and manifest fields;
    ``encode=False`` returns the generated :class:`Batch` (bench, the explorer). ``device``
    None keeps the generator's own. ``threads`` is the torch thread count while generating
    (part of the bytes; see the module docstring).
    """

    generator: Any
    source: Dataset
    seed: int = 0
    conditions: Any = None  # ConditionSource, FixedConditions or anything with names()/conditions()/for_sample()
    device: str | None = None
    encode: bool = False
    threads: int = 1
    cache_bytes: int = SOURCE_CACHE_BYTES
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise DriverError(f"seed must be non-negative, got {self.seed}")
        if self.threads < 1:
            raise DriverError(f"threads must be at least 1, got {self.threads}")
        self.method = self.generator.name
        self.dataset = dataset_id(self.source)


@dataclass
class Shard:
    """Sample indices made together; ``samples``: their recorded draws when replaying (else None)."""

    indices: list[int]
    samples: list | None = None


@dataclass
class Encoded:
    """A finished sample as files: ``fields`` (its manifest fields, without the run's identity), ``files``
    (relative path, bytes) in the order they are written."""

    index: int
    fields: dict
    files: list[tuple[str, bytes]]


@dataclass
class ShardResult:
    """What a shard made: per index its seed and source image; the encoded samples or the generated batch."""

    indices: list[int]
    seeds: list[int]
    source_indices: list[int]
    encoded: list[Encoded] | None = None
    output: Batch | None = None


@dataclass
class Finished:
    """One finished sample, as :func:`run_samples` yields it."""

    index: int
    seed: int
    source_index: int
    output: Batch | None = None  # a one-sample batch (encode=False)
    fields: dict | None = None  # manifest fields (encode=True)
    files: list[tuple[str, bytes]] | None = None  # (path, bytes) (encode=True)


def shards(indices: Iterable[int], batch_size: int, samples: Callable[[list[int]], list] | None = None
           ) -> Iterator[Shard]:
    """Cut ``indices`` (any iterable, consumed lazily) into shards of ``batch_size``."""
    if batch_size < 1:
        raise DriverError(f"batch_size must be at least 1, got {batch_size}")
    it = iter(indices)
    while chunk := [int(i) for i in islice(it, batch_size)]:
        yield Shard(chunk, samples(chunk) if samples is not None else None)


# -- the source, decoded once per worker ------------------------------------------------------------------------------
class CachedSource(Dataset):
    """A dataset whose decoded images are kept (the first ones asked for, up to ``max_bytes``).

    A run over N normals asks for image ``i % N`` (and its pair) again and again; this
    decodes each once. Rows come back as fresh tensors and meta copies, exactly what
    ``source.batch`` gives: caching never changes a byte. Other attributes (``root``,
    ``records``, ...) are the wrapped dataset's.
    """

    def __init__(self, source: Dataset, max_bytes: int = SOURCE_CACHE_BYTES) -> None:
        self.source = source
        self.scheme, self.category = source.scheme, source.category
        self.split, self.size = source.split, source.size
        self.max_bytes = int(max_bytes)
        self._rows: dict[int, Batch] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.source)

    @staticmethod
    def _nbytes(row: Batch) -> int:
        tensors = [row.image, row.mask, row.object_mask, row.depth, *row.extras.values()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def batch(self, indices: Sequence[int]) -> Batch:
        idx = [int(i) for i in indices]
        with self._lock:
            have = {i: self._rows[i] for i in idx if i in self._rows}
            full = self._bytes >= self.max_bytes
        if not have and full:
            return self.source.batch(idx)  # nothing of these is kept and nothing more will be
        missing = list(dict.fromkeys(i for i in idx if i not in have))
        if missing:
            fresh = self.source.batch(missing)
            for k, i in enumerate(missing):
                row = fresh[[k]]
                have[i] = row
                size = self._nbytes(row)
                with self._lock:
                    if i not in self._rows and self._bytes + size <= self.max_bytes:
                        self._rows[i] = row
                        self._bytes += size
        out = Batch.cat([have[i] for i in idx])
        return out._replace_trusted(meta=[dict(m) for m in out.meta])  # never the cached dicts themselves


class FixedConditions:
    """Per-sample conditions given as ``Batch.with_conditions`` keywords for samples ``indices``.

    What the explorer holds: a tensor (or list) with one row per sample of ``indices`` is
    selected per sample; a one-row tensor or a single value applies to every sample.
    """

    def __init__(self, values: dict[str, Any], indices: Sequence[int]) -> None:
        self.values = dict(values)
        self._pos = {int(i): k for k, i in enumerate(indices)}

    def __bool__(self) -> bool:
        return bool(self.values)

    def names(self) -> tuple[str, ...]:
        return tuple(self.values)

    def identity(self) -> None:
        return None

    def for_sample(self, i: int) -> dict:
        return {}

    def conditions(self, indices: Sequence[int], size: tuple[int, int]) -> dict[str, Any]:
        n = len(self._pos)
        try:
            pos = [self._pos[int(i)] for i in indices]
        except KeyError as e:
            raise DriverError(f"conditions were given for samples {sorted(self._pos)}, not for sample {e.args[0]}") from None
        out: dict[str, Any] = {}
        for k, v in self.values.items():
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n and (n > 1 or len(pos) == 1):
                out[k] = v[pos]
            elif isinstance(v, (list, tuple)) and len(v) == n and not isinstance(v, str):
                out[k] = [v[p] for p in pos]
            else:
                out[k] = v
        return out


# -- one process's share of the work --------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, then restore the count."""
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if old != n:
            torch.set_num_threads(old)


class _Worker:
    """The state of one process (or Dask worker thread): the generator on its device and the cached source."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        gen = plan.generator
        if plan.device is not None and torch.device(plan.device) != getattr(gen, "device", torch.device("cpu")):
            gen = gen.to(plan.device)
        self.generator = gen
        src = plan.source
        if plan.cache_bytes > 0 and not isinstance(src, (CachedSource, InMemoryDataset)):
            src = CachedSource(src, plan.cache_bytes)
        self.source = src

    def inputs(self, shard: Shard) -> Batch:
        return sample_inputs(self.generator, self.source, shard.indices, self.plan.conditions or None)

    def generate(self, shard: Shard, inputs: Batch) -> Batch:
        seeds = [sample_seed(self.plan.seed, i) for i in shard.indices]
        out = self.generator.generate(inputs, seeds=seeds, samples=shard.samples)
        if len(out) != len(shard.indices):
            raise RuntimeError(f"{self.generator.name} returned {len(out)} images for {len(shard.indices)} inputs")
        return out

    def finish(self, shard: Shard, inputs: Batch, out: Batch) -> ShardResult:
        plan, idx = self.plan, shard.indices
        seeds = [sample_seed(plan.seed, i) for i in idx]
        src_idx = source_indices(idx, len(self.source))
        res = ShardResult(indices=list(idx), seeds=seeds, source_indices=src_idx)
        if not plan.encode:
            res.output = out.to("cpu")
            return res
        images, masks = to_uint8(out.image), to_uint8(out.mask)[..., 0]
        res.encoded = []
        for k, i in enumerate(idx):
            label = safe_label(out.label[k])
            store: dict = {}
            packed = pack(out.meta[k].get("sample"), store, prefix="sample")
            fields = {"index": i, "label": label, "image": f"test/{label}/{i:06d}.png", "mask": None,
                      "sample_seed": seeds[k], "source_index": src_idx[k],
                      "source": str(inputs.meta[k].get("source", f"{plan.dataset}/{src_idx[k]}")),
                      "caption": _caption(out, inputs, k, label, plan.method), "sample": packed,
                      "draws": f"draws/{i:06d}.safetensors" if store else None,
                      "sample_conditions": plan.conditions.for_sample(i) if plan.conditions else None}
            files = []
            if store:
                files.append((fields["draws"], draws_bytes(store)))
            files.append((fields["image"], png_bytes(images[k])))
            if label != GOOD and out.meta[k].get("provides_mask", True):
                fields["mask"] = f"ground_truth/{label}/{i:06d}_mask.png"
                files.append((fields["mask"], png_bytes(np.where(masks[k] >= 128, 255, 0).astype(np.uint8))))
            elif label != GOOD:  # a defect its method did not locate: no mask file, "mask": null (not an empty mask)
                fields["provides_mask"] = False
            res.encoded.append(Encoded(i, fields, files))
        return res

    def run(self, shard: Shard) -> ShardResult:
        inputs = self.inputs(shard)
        return self.finish(shard, inputs, self.generate(shard, inputs))


# -- sessions -----------------------------------------------------------------------------------------------------
class Session:
    """One plan running on one executor: ``map`` turns shards into results, in order."""

    workers = 1

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        """Start what can start now (processes fork here, before the writer takes its lock)."""

    def close(self) -> None:
        """Stop everything this session started."""

    def map(self, shards: Iterable[Shard], meanwhile: Callable[[], None] | None = None) -> Iterator[ShardResult]:
        """The results of ``shards``, in order. ``meanwhile()`` is called once, after the first window of
        shards has gone to the workers and before the first result is awaited (where this process does the
        work, before it starts): the writer copies the train normals then, while worker processes generate."""
        raise NotImplementedError


def _dumps(obj: Any) -> bytes:
    """Pickle, by value where it must (cloudpickle, when installed: notebooks' classes, local functions)."""
    try:
        import cloudpickle

        return cloudpickle.dumps(obj)
    except ImportError:
        import pickle

        return pickle.dumps(obj)


def _loads(data: bytes) -> Any:
    """Unpickle a plan this run's own client made (in memory, over a pipe or Dask's channel — as
    multiprocessing and Dask unpickle every task); never a file, never bytes from anyone else."""
    import pickle

    return pickle.loads(data)


