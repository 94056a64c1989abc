"""The cross-product reference corpus and reference retrieval (paper step 3), with the target category held out.

Anomagic is *zero-shot*: no anomaly of the target product is used. References come from a
cross-dataset corpus (AnomVerse, 12,987 anomaly–mask–caption triplets). Here the corpus is the
anomalies given to ``fit`` (``corpus="fit"``, stored with the weights) or the toy dataset's
defects of every category (``corpus="toy"``, rendered on demand); in both, the ``holdout``
categories are removed before training *and* before retrieval, and each target sample's own
category (``meta["category"]``) is excluded from its retrieval as well.

Retrieval (official ``doubao/similarity_judgment.py``: an LLM maps the target (object, defect) to
the most similar corpus defect name and up to 3 similar objects; one reference is then drawn
at random among them). The LLM is not available offline; our substitute:

1. the defect name: the requested one when the corpus has it, else the corpus name whose
   pooled text embedding is closest to it (tiny text encoder); no request → one drawn uniformly;
2. the similar objects: the (at most 3) corpus categories with that defect whose mean image
   embedding (tiny CLIP) is closest to the target image;
3. one item drawn uniformly among those categories' items of that defect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Corpus", "toy_corpus", "Retriever", "fallback_caption"]


def fallback_caption(defect: str, category: str) -> str:
    """The training script's text when an item has no caption file."""
    return f"A high-quality image showing {defect} defect on {category}"


@dataclass
class Corpus:
    """Anomaly–mask–caption triplets with their product category."""

    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    masks: torch.Tensor  # [N, 1, H, W] in {0, 1}
    defects: list[str]
    categories: list[str]
    captions: list[str]
    _emb: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.defects)

    def without(self, categories: set[str]) -> Corpus:
        """The corpus with every item of ``categories`` removed (the zero-shot hold-out)."""
        keep = [i for i, c in enumerate(self.categories) if c not in categories]
        idx = torch.tensor(keep, dtype=torch.long)
        return Corpus(self.images[idx], self.masks[idx], [self.defects[i] for i in keep],
                      [self.categories[i] for i in keep], [self.captions[i] for i in keep])

    @classmethod
    def from_batch(cls, batch: Any) -> Corpus:
        cats = [str(m.get("category", "unknown")) for m in batch.meta]
        texts = batch.text or [None] * len(batch)
        caps = [t if t else fallback_caption(d, c) for t, d, c in zip(texts, batch.label, cats)]
        keep = [i for i, d in enumerate(batch.label) if d != "good" and bool(batch.mask[i].any())]
        idx = torch.tensor(keep, dtype=torch.long)
        return cls(batch.image[idx].float(), (batch.mask[idx] > 0.5).float(), [batch.label[i] for i in keep],
                   [cats[i] for i in keep], [caps[i] for i in keep])


_TOY_CACHE: dict[tuple, Corpus] = {}


def toy_corpus(size: int, length: int, holdout: set[str], seed: int = 0) -> Corpus:
    """The toy dataset's test-split defects (indices < ``length``) of every category outside ``holdout``."""
    key = (size, length, tuple(sorted(holdout)), seed)
    if key not in _TOY_CACHE:
        from anoplug.data.toy import CATEGORIES, render

        parts = []
        for cat in CATEGORIES:
            if cat in holdout or cat == "tray":  # tray's logical defects are arrangements, not local defects
                continue
            parts += [render(cat, "test", i, seed, size) for i in range(length)]
        batch = _concat(parts)
        _TOY_CACHE[key] = Corpus.from_batch(batch)
    return _TOY_CACHE[key]


def _concat(batches: list[Any]) -> Any:
    from anoplug.types import Batch

    return Batch(image=torch.cat([b.image for b in batches]), mask=torch.cat([b.mask for b in batches]),
                 label=[x for b in batches for x in b.label], meta=[x for b in batches for x in b.meta],
                 text=[x for b in batches for x in (b.text or [""] * len(b))])


class Retriever:
    """Steps 1–3 of the module docstring over a corpus (already without the hold-out)."""

    def __init__(self, corpus: Corpus, image_embed: Any, text_embed: Any) -> None:
        self.corpus = corpus
        self._image_embed = image_embed
        self._text_embed = text_embed
        self._names = sorted(set(corpus.defects))
        self._img: torch.Tensor | None = None
        self._txt: torch.Tensor | None = None

    def _embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._img is None:
            self._img = F.normalize(self._image_embed(self.corpus.images), dim=-1)
            self._txt = F.normalize(self._text_embed(self._names), dim=-1)
        return self._img, self._txt

    def defect_name(self, requested: str | None, g: torch.Generator, allowed: list[int]) -> str:
        names = sorted({self.corpus.defects[i] for i in allowed})
        if not names:
            raise ValueError("the reference corpus has no item outside the held-out categories")
        if not requested:
            return names[int(torch.randint(0, len(names), (1,), generator=g))]
        if requested in names:
            return requested
        _, txt = self._embeddings()
        q = F.normalize(self._text_embed([requested]), dim=-1)[0]
        sims = {n: float(txt[self._names.index(n)] @ q) for n in names}
        return max(names, key=lambda n: (sims[n], n))

    def pick(self, target_image: torch.Tensor, target_category: str | None, requested: str | None,
             g: torch.Generator, max_objects: int = 3) -> tuple[int, str]:
        """``(corpus index, defect name)`` for one target image; never an item of ``target_category``."""
        allowed = [i for i, c in enumerate(self.corpus.categories) if c != target_category]
        defect = self.defect_name(requested, g, allowed)
        items = [i for i in allowed if self.corpus.defects[i] == defect]
        cats = sorted({self.corpus.categories[i] for i in items})
        if len(cats) > max_objects:
            img, _ = self._embeddings()
            q = F.normalize(self._image_embed(target_image[None]), dim=-1)[0]
            score = {c: float(img[[i for i in items if self.corpus.categories[i] == c]].mean(0) @ q) for c in cats}
            cats = sorted(cats, key=lambda c: (-score[c], c))[:max_objects]
            items = [i for i in items if self.corpus.categories[i] in cats]
        return items[int(torch.randint(0, len(items), (1,), generator=g))], defect
