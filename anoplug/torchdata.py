"""On-the-fly synthetic anomalies as a ``torch.utils.data.Dataset`` (DRAEM-, SimpleNet-, GLASS-style training).

Most synthetic anomalies are never written to disk: a detector's training DataLoader
draws them per sample. :class:`SyntheticAnomalyDataset` wraps any source of normal
images and, with probability ``p`` (ASBench's ``percent``), returns sample *i* made
synthetic by any anoplug generator (or hybrid), else the clean normal.

**Determinism rule.** Sample *i* of epoch *e* depends on ``(seed, e, i)`` alone — never on a
global RNG, the worker that made it, or the batch it lands in:

- the *run seed* of epoch *e* is ``seed`` for epoch 0 and ``sample_seed(seed, e)`` after;
- the anomaly decision of sample *i* is one uniform draw from a ``torch.Generator`` seeded
  with ``sample_seed(sample_seed(run_seed, i), 1)`` (a stream of its own);
- a synthetic sample is made by the project's one driver,
  :func:`anoplug.driver.generate_batch` (inputs from :func:`anoplug.data.inputs.sample_inputs`:
  source image ``i % N``, the paired source for NSA-style methods, user conditions; seed
  ``sample_seed(run_seed, i)``; one torch thread). So at epoch 0 sample *i* is byte for byte
  what ``anoplug generate --seed SEED`` writes as sample *i*, and a batch generated in one
  call (:meth:`SyntheticAnomalyDataset.batched_collate`) equals the samples made one by one.

With ``DataLoader(num_workers > 0)`` each worker holds its own copy of the generator and a
decoded-source cache; there is no RNG state to share. ``set_epoch`` must be called before
the DataLoader is iterated (workers copy the dataset when an epoch's iterator starts; with
``persistent_workers=True`` they keep the epoch they started with).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from anoplug.data.base import Dataset as AnoplugDataset
from anoplug.data.inputs import ConditionSource, InMemoryDataset
from anoplug.seeding import sample_seed
from anoplug.types import GOOD, Batch, from_uint8

__all__ = ["SyntheticAnomalyDataset", "IndexableSource", "as_source", "run_seed", "is_synthetic"]

#: the stream of the anomaly decision, apart from the generator's own seed ``sample_seed(run_seed, i)``
_DECISION_STREAM = 1

Output = Literal["tuple", "dict"]


def run_seed(seed: int, epoch: int) -> int:
    """The driver seed of epoch ``epoch``: ``seed`` itself at epoch 0 (so epoch 0 is ``anoplug generate``'s run)."""
    if epoch < 0:
        raise ValueError(f"epoch must be non-negative, got {epoch}")
    return int(seed) if epoch == 0 else sample_seed(int(seed), int(epoch))


def is_synthetic(p: float, seed: int, index: int) -> bool:
    """Whether sample ``index`` of a run with seed ``seed`` is synthetic: one seeded uniform draw below ``p``."""
    g = torch.Generator().manual_seed(sample_seed(sample_seed(seed, index), _DECISION_STREAM))
    return bool(torch.rand((), generator=g, dtype=torch.float64).item() < p)


def _to_image(x: Any, where: str) -> torch.Tensor:
    """One image (float tensor [3,H,W] in [0,1], uint8 array HWC/HW, PIL image) as float32 [3,H,W]."""
    if isinstance(x, (tuple, list)) and x:  # (image, target) pairs, e.g. torchvision's ImageFolder
        x = x[0]
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        t = t.float()
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"source: {where} is a tensor of shape {tuple(x.shape)}, expected [3,H,W]")
        return t.expand(3, -1, -1).clamp(0, 1).contiguous()
    try:
        from PIL import Image

        if isinstance(x, Image.Image):
            x = np.asarray(x.convert("RGB"))
    except ImportError:  # pragma: no cover - Pillow is a dependency
        pass
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise ValueError(f"source: {where} is a {x.dtype} array, expected uint8 (or a float tensor in [0,1])")
        t = from_uint8(x)[0]
        return t.expand(3, -1, -1).contiguous()
    raise ValueError(f"source: {where} is a {type(x).__name__}, expected a tensor, uint8 array or PIL image")


class IndexableSource(AnoplugDataset):
    """Any indexable of images (a list, a torchvision dataset, a tensor [N,3,H,W]) as an anoplug dataset of normals."""

    scheme = "indexable"

    def __init__(self, items: Any, *, category: str = "") -> None:
        if not hasattr(items, "__len__") or not hasattr(items, "__getitem__"):
            raise ValueError(f"source: {type(items).__name__} is not indexable (needs __len__ and __getitem__)")
        self.items, self.category = items, category
        self.size = _to_image(items[0], "item 0").shape[-1] if len(items) else 0

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: Sequence[int]) -> Batch:
        idx = [int(i) for i in indices]
        images = torch.stack([_to_image(self.items[i], f"item {i}") for i in idx])
        return Batch(image=images, meta=[{"source": f"indexable/{i}", "index": i} for i in idx])


def as_source(source: Any) -> AnoplugDataset:
    """An anoplug dataset from a dataset, a ``"toy:metal"``-style spec, a :class:`Batch`, or any indexable of images."""
    if isinstance(source, AnoplugDataset):
        return source
    if isinstance(source, str):
        from anoplug.data import open_dataset

        return open_dataset(source)
    if isinstance(source, Batch):
        return InMemoryDataset(source)
    return IndexableSource(source)


def _make_generator(generator: Any, params: dict[str, Any] | None) -> Any:
    """A generator instance from an instance or a registry name (``a+b`` is ASBench's hybrid)."""
    if not isinstance(generator, str):
        if params:
            raise ValueError("params: give params only with a generator name, not with an instance")
        if not callable(getattr(generator, "generate", None)) or not hasattr(generator, "requires"):
            raise ValueError(f"generator: {type(generator).__name__} is not an anoplug generator")
        gen = generator
    else:
        from anoplug.registry import UnknownNameError, get_registry

        reg, kw = get_registry(), dict(params or {})
        name = generator
        if "+" in name:
            kw.setdefault("members", ",".join(name.split("+")))
            name = "hybrid"
        try:
            cls = reg.generator_class(name)
        except (UnknownNameError, KeyError) as e:
            known = ", ".join(sorted(reg.specs("generators")))
            raise ValueError(f"generator: unknown generator {generator!r}; installed: {known}") from e
        fields = getattr(getattr(cls, "Params", None), "model_fields", {})
        if "probability" in fields:  # ``p`` is the one knob: the method's own coin (DRAEM's) always lands "anomaly"
            kw.setdefault("probability", 1.0)
        gen = cls(**kw)
    if getattr(gen, "level", "image") != "image":
        raise ValueError(f"generator: {gen.name} is feature-level; only image-level generators make samples")
    return gen


class SyntheticAnomalyDataset(torch.utils.data.Dataset):
    """Normal or synthetic samples of ``source`` on the fly; sample *i* depends on ``(seed, epoch, i)`` alone.

    - ``source``: an anoplug dataset (``open_dataset("toy:metal")``, MVTec, folder), a spec
      string, a :class:`Batch`, an :class:`~anoplug.data.inputs.InMemoryDataset`, or any
      indexable of images;
    - ``generator``: a generator instance or a registry name (``"draem"``, ``"cutpaste"``,
      ``"draem+cutpaste"`` for ASBench's hybrid) with ``params``; by name, a method's own
      ``probability`` defaults to 1 so that ``p`` alone decides;
    - ``p``: the probability that a sample is synthetic (ASBench's ``percent``);
    - ``length``: samples per epoch (default ``len(source)``; sample *i* reads image ``i % N``);
    - ``output``: ``"tuple"`` gives ``(image [3,H,W], mask [1,H,W], label int)``, ``"dict"`` adds
      ``anomaly_type`` and ``meta`` (collate those with :meth:`collate`); a generator that provides
      no mask (``mask_provided()`` false, e.g. the glass DDPM) is refused in tuple mode, and in dict
      mode its samples say so in ``meta["generator"]["provides_mask"]``;
    - ``conditions``: per-sample user conditions (:class:`~anoplug.data.inputs.ConditionSource`).

    A non-synthetic sample is the source row as it is (a normal's mask is empty, its label 0).
    """

    def __init__(self, source: Any, generator: Any, *, p: float = 0.5, seed: int = 0, epoch: int = 0,
                 params: dict[str, Any] | None = None, length: int | None = None, output: Output = "tuple",
                 conditions: ConditionSource | None = None) -> None:
        from anoplug.driver import CachedSource

        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if output not in ("tuple", "dict"):
            raise ValueError(f"output must be 'tuple' or 'dict', got {output!r}")
        src = as_source(source)
        if len(src) < 1:
            raise ValueError(f"source: {src!r} has no images")
        if length is not None and (not isinstance(length, int) or length < 1):
            raise ValueError(f"length must be a positive integer, got {length!r}")
        self.generator = _make_generator(generator, params)
        if output == "tuple" and not self.generator.mask_provided():
            raise ValueError(f"generator {self.generator.name!r} provides no masks (image-level labels only): its "
                             "all-zero mask would train a segmenter on 'no defect pixels'; use output='dict' and "
                             "read meta['generator']['provides_mask'], or a configuration that derives a mask")
        self.p, self.seed, self.output, self.conditions = float(p), seed, output, conditions
        self.length = len(src) if length is None else length
        # decoded once per process (each DataLoader worker keeps its own copy); never changes a byte
        self.source = src if isinstance(src, (CachedSource, InMemoryDataset)) else CachedSource(src)
        self.epoch = 0
        self.set_epoch(epoch)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (spawned workers) the bare source: the decoded cache holds a lock and is per process anyway."""
        from anoplug.driver import CachedSource

        state = dict(self.__dict__)
        if isinstance(self.source, CachedSource):
            state["source"] = self.source.source
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from anoplug.driver import CachedSource

        self.__dict__.update(state)
        if not isinstance(self.source, (CachedSource, InMemoryDataset)):
            self.source = CachedSource(self.source)

    # -- the epoch ---------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s samples (decisions and anomalies) from now on; call before iterating a DataLoader."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def run_seed(self, epoch: int | None = None) -> int:
        """The driver seed of ``epoch`` (default: the current one)."""
        return run_seed(self.seed, self.epoch if epoch is None else epoch)

    def is_synthetic(self, index: int, epoch: int | None = None) -> bool:
        """Whether sample ``index`` of ``epoch`` is synthetic (the decision alone: nothing is generated)."""
        return is_synthetic(self.p, self.run_seed(epoch), index)

    # -- samples -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.length

    def _check_index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} samples")
        return i

    def make(self, indices: Sequence[int], epoch: int | None = None) -> list[Any]:
        """Samples ``indices`` of ``epoch``, their synthetic ones made in one generator call."""
        from anoplug.driver import InProcess, generate_batch

        e = self.epoch if epoch is None else int(epoch)
        idx = [self._check_index(i) for i in indices]
        rs = run_seed(self.seed, e)
        synth = [i for i in idx if is_synthetic(self.p, rs, i)]
        made: dict[int, tuple[Batch, int, bool]] = {}
        if synth:  # the driver's own path: sample_inputs, sample_seed(rs, i), one torch thread
            out = generate_batch(self.generator, self.source, synth, seed=rs, conditions=self.conditions,
                                 batch_size=len(synth), executor=InProcess(pipeline=False), threads=1)
            made.update({i: (out, k, True) for k, i in enumerate(synth)})
        plain = [i for i in idx if i not in made]
        if plain:
            n = len(self.source)
            rows = self.source.batch([i % n for i in plain])
            made.update({i: (rows, k, False) for k, i in enumerate(plain)})
        return [self._item(i, e, rs, *made[i]) for i in idx]

    def _item(self, i: int, epoch: int, rs: int, b: Batch, k: int, synthetic: bool) -> Any:
        image, mask = b.image[k].clone(), b.mask[k].clone()
        label = int(b.label[k] != GOOD)
        if self.output == "tuple":
            return image, mask, label
        meta = {"index": i, "epoch": epoch, "synthetic": synthetic, "source_index": i % len(self.source),
                "sample_seed": sample_seed(rs, i) if synthetic else None,
                "method": self.generator.name if synthetic else None, "generator": dict(b.meta[k])}
        return {"image": image, "mask": mask, "label": label, "anomaly_type": b.label[k], "meta": meta}

    def __getitem__(self, i: int) -> Any:
        return self.make([i])[0]

    # -- batched generation --------------------------------------------------------------------------------------
    def deferred(self) -> _Deferred:
        """A view whose items are ``(index, epoch)`` only: pair it with :meth:`batched_collate` in a DataLoader."""
        return _Deferred(self)

    def batched_collate(self, items: Sequence[tuple[int, int]]) -> Any:
        """A DataLoader batch from ``deferred()`` items, synthetic samples generated in one call per epoch present."""
        by_epoch: dict[int, list[int]] = {}
        for i, e in items:
            by_epoch.setdefault(int(e), []).append(int(i))
        got: dict[tuple[int, int], Any] = {}
        for e, idx in by_epoch.items():
            got.update({(i, e): s for i, s in zip(idx, self.make(idx, e), strict=True)})
        return self.collate([got[(int(i), int(e))] for i, e in items])

    def collate(self, samples: Sequence[Any]) -> Any:
        """Stack samples like ``default_collate``; in dict mode ``anomaly_type`` and ``meta`` stay lists."""
        if self.output == "tuple":
            return (torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples]),
                    torch.tensor([s[2] for s in samples], dtype=torch.int64))
        return {"image": torch.stack([s["image"] for s in samples]), "mask": torch.stack([s["mask"] for s in samples]),
                "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
                "anomaly_type": [s["anomaly_type"] for s in samples], "meta": [s["meta"] for s in samples]}

    def loader(self, *, batch_size: int = 8, batched: bool = False, **kw: Any) -> torch.utils.data.DataLoader:
        """A DataLoader over this dataset: per-sample generation, or ``batched=True`` (one generator call per batch)."""
        if batched:
            return torch.utils.data.DataLoader(self.deferred(), batch_size=batch_size, collate_fn=self.batched_collate,
                                               **kw)
        return torch.utils.data.DataLoader(self, batch_size=batch_size, collate_fn=self.collate, **kw)


class _Deferred(torch.utils.data.Dataset):
    """Items are ``(index, epoch)``: the work moves to the collate function (run in the worker all the same)."""

    def __init__(self, parent: SyntheticAnomalyDataset) -> None:
        self.parent = parent

    def __len__(self) -> int:
        return len(self.parent)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return self.parent._check_index(i), self.parent.epoch

