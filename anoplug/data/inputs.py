"""The input of sample *i* of a run, built one way for the writer, bench, the explorer and replay.

Sample *i* of a run over a source of N normal images reads image ``i % N``; a generator
that borrows content from a second normal image (``Requires.paired_source``) gets image
``(i % N + 1) % N`` as ``conditions.source_image``; per-sample conditions the user gave
(target masks, boxes, a prompt, reference anomalies) come from a :class:`ConditionSource` by
the same index, and so do user depth maps (``batch.depth``, replacing the dataset's own).
Nothing depends on the chunk a sample lands in, so its bytes never depend on who asked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anoplug.data.base import DataError, Dataset
from anoplug.data.condition_files import DepthFolder, ReferenceSet, read_references
from anoplug.data.folder import IMAGE_EXTENSIONS, list_images
from anoplug.types import Batch

__all__ = ["ConditionSource", "InMemoryDataset", "sample_inputs", "source_indices", "check_used"]

#: conditions a ``--references`` folder brings along with ``references``, given only to methods that read them
_REFERENCE_EXTRAS = ("reference_masks", "reference_captions")


class InMemoryDataset(Dataset):
    """A :class:`Batch` seen as a dataset (what bench and the explorer hold), so they pair sources as the writer does."""

    def __init__(self, batch: Batch, *, category: str = "", scheme: str = "memory") -> None:
        self._batch = batch
        self.category, self.scheme, self.size = category, scheme, batch.size[0]

    def __len__(self) -> int:
        return len(self._batch)

    def batch(self, indices: Sequence[int]) -> Batch:
        return self._batch[list(indices)]


def source_indices(indices: Sequence[int], n_source: int) -> list[int]:
    """The source image of each sample index: ``i % N``."""
    return [int(i) % n_source for i in indices]


@dataclass
class ConditionSource:
    """Per-sample conditions given by the user, indexed by sample number (files are cycled).

    - ``masks``: a folder of mask images (sorted by name; sample *i* takes file ``i % n``),
      read as masks (any non-zero stored value is the defect, ``docs/image_input.md``),
      resized with nearest neighbour;
    - ``boxes``: a JSON file holding one list of ``[label, x1, y1, x2, y2]`` per sample
      (cycled), corners normalised to [0, 1];
    - ``prompt``: one prompt for every sample;
    - ``defect_type``: comma-separated defect-type names, cycled over the samples;
    - ``references``: a folder of reference anomalies (``NAME.png`` + optional ``NAME_mask.png``,
      captions in ``captions.json`` or ``NAME.txt``; :mod:`anoplug.data.condition_files`). All K
      are given to *every* sample, so the method makes its own seeded choice among them (Anomagic
      draws one per sample, DT-GAN averages their style), as it does with the Python API;
      their masks and captions go to the methods that read them;
    - ``depth``: a folder of depth maps (sorted; sample *i* takes file ``i % n``), set as
      ``batch.depth`` in place of the dataset's own, for methods that read depth.
    """

    masks: str | Path | None = None
    boxes: str | Path | None = None
    prompt: str | None = None
    defect_type: str | None = None
    references: str | Path | None = None
    depth: str | Path | None = None
    _mask_files: list[Path] = field(default_factory=list, init=False, repr=False)
    _box_rows: list[list] = field(default_factory=list, init=False, repr=False)
    _refs: ReferenceSet | None = field(default=None, init=False, repr=False, compare=False)
    _ref_pixels: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # size -> decoded refs
    _depth: DepthFolder | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.masks is not None:
            d = Path(self.masks)
            if not d.is_dir():
                raise DataError(f"--masks {d}: not a directory of mask images")
            self._mask_files = list_images(d)  # the loaders' listing: hidden files skipped, broken links refused
            if not self._mask_files:
                raise DataError(f"--masks {d}: no mask images ({', '.join(IMAGE_EXTENSIONS)})")
        if self.boxes is not None:
            f = Path(self.boxes)
            if not f.is_file():
                raise DataError(f"--boxes {f}: file not found")
            try:
                rows = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"--boxes {f}: not valid JSON ({e})") from e
            if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
                raise DataError(f"--boxes {f}: expected a JSON list with one list of boxes per sample")
            for i, row in enumerate(rows):
                for b in row:
                    if not (isinstance(b, list) and len(b) == 5 and all(isinstance(v, (int, float)) for v in b[1:])):
                        raise DataError(f"--boxes {f}: sample {i}: each box is [label, x1, y1, x2, y2], got {b!r}")
            self._box_rows = [[tuple(b) for b in row] for row in rows]
        if self.prompt is not None and not self.prompt.strip():
            raise DataError("--prompt: empty prompt")
        if self.defect_type is not None and not all(t.strip() for t in self.defect_type.split(",")):
            raise DataError(f"--defect-type {self.defect_type!r}: give one or more names separated by commas")
        if self.references is not None:
            self._refs = read_references(self.references)
        if self.depth is not None:
            self._depth = DepthFolder(self.depth)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.masks, self.boxes, self.prompt, self.defect_type, self.references,
                                           self.depth))

    def names(self) -> tuple[str, ...]:
        """The condition fields this source sets (``references``' masks and captions ride with it: :meth:`extras`)."""
        return tuple(n for n, v in (("target_mask", self.masks), ("boxes", self.boxes), ("prompt", self.prompt),
                                    ("defect_type", self.defect_type), ("references", self.references))
                     if v is not None)

    def extras(self) -> tuple[str, ...]:
        """The condition fields that come with ``references``: ``reference_masks``, ``reference_captions``."""
        r = self._refs
        if r is None:
            return ()
        return tuple(n for n, v in (("reference_masks", r.masks), ("reference_captions", r.captions)) if v is not None)

    @property
    def sets_depth(self) -> bool:
        """Gives ``batch.depth`` (``--depth DIR``)."""
        return self._depth is not None

    def _types(self) -> list[str]:
        return [t.strip() for t in (self.defect_type or "").split(",") if t.strip()]

    def identity(self) -> dict[str, Any]:
        """What decides the conditions (file contents by hash), for a run's identity."""
        out: dict[str, Any] = {}
        if self.masks is not None:
            h = hashlib.sha256()
            for p in self._mask_files:
                h.update(p.name.encode() + b"\0" + p.read_bytes())
            out["masks"] = {"dir": str(self.masks), "files": len(self._mask_files), "sha256": h.hexdigest()[:16]}
        if self.boxes is not None:
            out["boxes"] = {"file": str(self.boxes), "sha256": hashlib.sha256(Path(self.boxes).read_bytes()).hexdigest()[:16]}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.defect_type is not None:
            out["defect_type"] = self.defect_type
        if self._refs is not None:
            out["references"] = self._refs.identity()
        if self._depth is not None:
            out["depth"] = self._depth.identity()
        return out

    def for_sample(self, i: int) -> dict[str, Any]:
        """The manifest's note of sample *i*'s conditions (file name, boxes, prompt)."""
        out: dict[str, Any] = {}
        if self._mask_files:
            out["target_mask"] = self._mask_files[i % len(self._mask_files)].name
        if self._box_rows:
            out["boxes"] = [list(b) for b in self._box_rows[i % len(self._box_rows)]]
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.defect_type is not None:
            types = self._types()
            out["defect_type"] = types[i % len(types)]
        if self._refs is not None:
            out["references"] = self._refs.names()
        if self._depth is not None:
            out["depth"] = self._depth.file(i).name
        return out

    def conditions(self, indices: Sequence[int], size: tuple[int, int]) -> dict[str, Any]:
        """Keyword conditions for ``Batch.with_conditions`` of samples ``indices`` at image ``size``."""
        from PIL import Image

        from anoplug.types import load_image

        out: dict[str, Any] = {}
        if self._mask_files:
            h, w = size
            masks = []
            for i in indices:
                path = self._mask_files[int(i) % len(self._mask_files)]
                m = load_image(path, mode="mask")
                if m.shape != (h, w):
                    m = np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST))
                masks.append(m >= 128)
            out["target_mask"] = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None]
        if self._box_rows:
            out["boxes"] = [list(self._box_rows[int(i) % len(self._box_rows)]) for i in indices]
        if self.prompt is not None:
            out["prompt"] = [self.prompt] * len(indices)
        if self.defect_type is not None:
            types = self._types()
            out["defect_type"] = [types[int(i) % len(types)] for i in indices]
        if self._refs is not None:
            out.update(self._references(len(indices), size))
        return out

    def _references(self, n: int, size: tuple[int, int]) -> dict[str, Any]:
        """The same K references for each of ``n`` samples (decoded once per size, shared, not copied)."""
        key = tuple(size)
        if key not in self._ref_pixels:
            self._ref_pixels[key] = self._refs.load(key)
        images, masks = self._ref_pixels[key]
        out: dict[str, Any] = {"references": images[None].expand(n, *images.shape)}
        if masks is not None:
            out["reference_masks"] = masks[None].expand(n, *masks.shape)
        if self._refs.captions is not None:
            out["reference_captions"] = [list(self._refs.captions) for _ in range(n)]
        return out

    def depth_maps(self, indices: Sequence[int], size: tuple[int, int]) -> torch.Tensor | None:
        """``[B,1,H,W]`` depth of samples ``indices`` (``--depth``), or None."""
        return None if self._depth is None else self._depth.maps(indices, size)


def check_used(generator: Any, conditions: Any) -> None:
    """Refuse (:class:`DataError`, one line) user conditions or depth maps the generator does not read."""
    if not conditions:
        return
    requires = generator.requires
    unused = [c for c in conditions.names() if c not in requires.uses]
    if unused:
        flag = {"references": " (--references)", "target_mask": " (--masks)", "boxes": " (--boxes)"}.get(unused[0], "")
        raise DataError(f"{generator.name} does not use conditions.{unused[0]}{flag} "
                        f"(it uses: {', '.join(requires.uses) or 'none'})")
    if getattr(conditions, "sets_depth", False) and not requires.reads_depth:
        raise DataError(f"{generator.name} does not read depth maps: drop --depth (methods that do declare "
                        "Requires(depth=True) or Requires(accepts_depth=True))")


def sample_inputs(generator: Any, source: Dataset, indices: Sequence[int],
                  conditions: ConditionSource | None = None) -> Batch:
    """The input batch of samples ``indices``: source images, paired sources and user conditions."""
    n = len(source)
    if n < 1:
        raise DataError(f"source dataset {source!r} is empty")
    src_idx = source_indices(indices, n)
    batch = source.batch(src_idx)
    kw: dict[str, Any] = {}
    requires = generator.requires
    if requires.paired_source:
        pair = source.batch([(j + 1) % n for j in src_idx])
        kw["source_image"] = pair.image
        if pair.object_mask is not None and "source_object_mask" in requires.uses:  # only to methods that read it
            kw["source_object_mask"] = pair.object_mask
    if conditions:
        check_used(generator, conditions)
        given = conditions.conditions(indices, batch.size)
        kw.update({k: v for k, v in given.items() if k not in _REFERENCE_EXTRAS or k in requires.uses})
        depth = conditions.depth_maps(indices, batch.size) if getattr(conditions, "sets_depth", False) else None
        if depth is not None:
            batch = batch._replace_trusted(depth=depth.to(batch.image.device))
    return batch.with_conditions(**kw) if kw else batch
