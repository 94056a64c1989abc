"""Placeholder tokens in a frozen text encoder: learned rows and per-sample injected vectors (spec §2.2).

The shared block of every token-learning method. Two flavours, one mechanism:

- **fixed placeholder tokens** (AnoGen, SeaS, AnomalyDiffusion's mask model): new tokens are
  added to the tokenizer; only their embedding rows are trained;
- **per-sample injected vectors** (AnomalyDiffusion's spatial tokens): the rows at some
  placeholder positions are replaced by a per-sample tensor computed by another module
  (e.g. a mask encoder), so they can differ inside a batch and carry gradients back to it.

Both work by wrapping the text encoder's input embedding (CLIP or LDM-BERT) in
:class:`PlaceholderEmbedding`; the frozen base table is never resized or modified. Training
the rows is :mod:`.textual_inversion`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = ["PlaceholderEmbedding", "install_placeholders", "embedding_slot"]


def embedding_slot(text_encoder: Any) -> tuple[nn.Module, str]:
    """The (owner, attribute) holding the token-embedding table of a CLIP or LDM-BERT text encoder."""
    for path in ("text_model.embeddings.token_embedding", "model.embed_tokens", "embeddings.token_embedding"):
        owner: Any = text_encoder
        parts = path.split(".")
        try:
            for p in parts[:-1]:
                owner = getattr(owner, p)
            if isinstance(getattr(owner, parts[-1]), nn.Module):
                return owner, parts[-1]
        except AttributeError:
            continue
    raise TypeError(f"cannot find the token embedding of {type(text_encoder).__name__}")


class PlaceholderEmbedding(nn.Module):
    """Token embedding where placeholder ids map to learned rows or to per-sample injected vectors."""

    def __init__(self, base: nn.Module, placeholder_ids: Sequence[int], init: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("ids", torch.as_tensor(list(placeholder_ids), dtype=torch.long), persistent=False)
        self.learned = nn.Parameter(init.detach().clone().float())  # [n, D]
        self._injected: torch.Tensor | None = None  # [B, k, D]
        self._injected_slots: torch.Tensor | None = None  # [k] positions in ``ids``

    @property
    def weight(self) -> torch.Tensor:  # some encoders read the table's dtype/shape
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return int(self.base.num_embeddings)

    def slots(self, token_ids: Sequence[int]) -> torch.Tensor:
        pos = {int(t): i for i, t in enumerate(self.ids.tolist())}
        missing = [t for t in token_ids if int(t) not in pos]
        if missing:
            raise KeyError(f"token ids {missing} are not placeholders of this embedding")
        return torch.tensor([pos[int(t)] for t in token_ids], dtype=torch.long, device=self.ids.device)

    @contextlib.contextmanager
    def injected(self, vectors: torch.Tensor, token_ids: Sequence[int]) -> Iterator[None]:
        """Within the block, placeholders ``token_ids`` take ``vectors[b, k]`` in prompt *b*."""
        if vectors.ndim != 3 or vectors.shape[1] != len(token_ids):
            raise ValueError(f"injected vectors must be [B, {len(token_ids)}, D], got {tuple(vectors.shape)}")
        saved = self._injected, self._injected_slots
        self._injected, self._injected_slots = vectors, self.slots(token_ids)
        try:
            yield
        finally:
            self._injected, self._injected_slots = saved

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        emb = self.base(input_ids.clamp(max=self.num_embeddings - 1))
        hit = input_ids[..., None] == self.ids.to(input_ids.device)  # [B, L, n]
        if not bool(hit.any()):
            return emb
        b = input_ids.shape[0]
        table = self.learned.to(emb.dtype)[None].expand(b, -1, -1)  # [B, n, D]
        if self._injected is not None:
            inj = self._injected.to(emb.dtype)
            if inj.shape[0] != b:  # classifier-free guidance: the extra prompts carry no placeholder
                inj = inj.repeat(-(-b // inj.shape[0]), 1, 1)[:b]
            table = table.index_copy(1, self._injected_slots.to(emb.device), inj)
        repl = torch.einsum("bln,bnd->bld", hit.to(emb.dtype), table)
        return torch.where(hit.any(-1, keepdim=True), repl, emb)


def install_placeholders(text_encoder: Any, tokenizer: Any, tokens: Sequence[str], init_word: str) -> PlaceholderEmbedding:
    """Add ``tokens`` to the tokenizer and wrap the encoder's embedding; rows start at ``init_word``'s embedding.

    Installing again adds the new tokens to the existing wrapper (its learned rows are kept).
    """
    tokenizer.add_tokens([t for t in tokens if t not in tokenizer.get_vocab()])
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    owner, attr = embedding_slot(text_encoder)
    current = getattr(owner, attr)
    base = current.base if isinstance(current, PlaceholderEmbedding) else current
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if not init_ids:
        raise ValueError(f"init word {init_word!r} tokenizes to nothing")
    init_vec = base.weight[init_ids[0]].detach()
    if isinstance(current, PlaceholderEmbedding):
        keep = current.ids.tolist()
        new = [i for i in ids if i not in keep]
        init = torch.cat([current.learned.detach(), init_vec[None].expand(len(new), -1)])
        ids_all = keep + new
    else:
        init, ids_all = init_vec[None].expand(len(ids), -1), ids
    wrapper = PlaceholderEmbedding(base, ids_all, init).to(base.weight.device)
    setattr(owner, attr, wrapper)
    return wrapper
