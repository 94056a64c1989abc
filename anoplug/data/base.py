"""The dataset contract: an indexable set of samples that yields :class:`~anoplug.types.Batch`.

Loaders (toy, MVTec AD, LOCO, 3D-AD, VisA, folder) all return this shape so every CLI
verb, notebook and evaluator reads data the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from anoplug.types import Batch


class DataError(ValueError):
    """Bad dataset input (missing folder, unreadable file, mismatched names); names the path."""


class Dataset:
    """Base class: subclasses implement ``__len__`` and ``batch(indices)``.

    ``category`` names the subset (e.g. ``"metal"``), ``split`` is ``"train"`` or ``"test"``,
    ``size`` the square side images are delivered at.
    """

    scheme: str = ""
    category: str = ""
    split: str = "train"
    size: int = 256

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> Batch:
        """The samples at ``indices`` as one Batch (image, mask, label, meta, optional fields)."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> Batch:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        return self.batch([i % len(self)])

    def iter_batches(self, batch_size: int = 16) -> Iterator[Batch]:
        for s in range(0, len(self), batch_size):
            yield self.batch(range(s, min(s + batch_size, len(self))))

    def all(self) -> Batch:
        return self.batch(range(len(self)))
