"""Textual inversion: learn token embeddings of a frozen text-to-image model.

Two flavours share one mechanism (spec §2.2):

- **fixed placeholder tokens** (AnoGen, SeaS, AnomalyDiffusion's mask model): new tokens are
  added to the tokenizer; only their embedding rows are trained;
- **per-sample injected vectors** (AnomalyDiffusion's spatial tokens): the rows at some
  placeholder positions are replaced by a per-sample tensor computed by another module
  (e.g. a mask encoder), so they can differ inside a batch and carry gradients back to it.

Both work by wrapping the text encoder's input embedding (CLIP or LDM-BERT) in
:class:`PlaceholderEmbedding`; the frozen base table is never resized or modified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PlaceholderEmbedding", "install_placeholders", "embedding_loss", "train_embeddings", "save_tensors", "load_tensors",
           "embedding_slot"]


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


def embedding_loss(parts: Any, latents: torch.Tensor, prompts: Sequence[str] | Callable[[torch.Tensor], list[str]], *,
                   batch_size: int, generator: torch.Generator, loss_mask: torch.Tensor | None = None,
                   inject: Callable[[torch.Tensor], contextlib.AbstractContextManager] | None = None,
                   augment: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], tuple] | None = None
                   ) -> torch.Tensor:
    """One training step's ε-prediction loss of a frozen UNet on a batch drawn from ``latents``.

    Draws, in this order, from ``generator``: the ``batch_size`` item indices, the
    augmentation (``augment(z0, mask, indices)``), the timesteps, the noise, then whatever
    ``prompts`` draws. ``loss_mask`` (``[N,1,h,w]`` at latent size) restricts the loss to the
    mask: prediction and target are both multiplied by it and the mean runs over all
    positions (as in AnomalyDiffusion). ``inject(indices)`` returns a context in which the
    text encoder sees the per-sample vectors of those items. ``prompts`` is one prompt per
    item or a callable ``indices -> prompts`` (e.g. a template drawn per step). The caller
    runs backward and the optimiser (a :class:`~anoplug.learned.LearnedGenerator`'s
    ``training_step``, or :func:`train_embeddings`).
    """
    n = len(latents)
    if n == 0 or (not callable(prompts) and n != len(prompts)):
        raise ValueError(f"need as many prompts as latents, got {0 if callable(prompts) else len(prompts)} for {n}")
    prompt_of = prompts if callable(prompts) else (lambda idx: [prompts[int(i)] for i in idx])
    sched = parts.scheduler
    device = latents.device
    idx = torch.randint(0, n, (batch_size,), generator=generator)
    z0 = latents[idx]
    m = loss_mask[idx] if loss_mask is not None else None
    if augment is not None:
        z0, m = augment(z0, m, idx)
    t = torch.randint(0, int(sched.config.num_train_timesteps), (batch_size,), generator=generator).to(device)
    noise = torch.randn(z0.shape, generator=generator).to(device)
    x_t = sched.add_noise(z0, noise, t)
    with inject(idx) if inject is not None else contextlib.nullcontext():
        cond = parts.encode_text(prompt_of(idx))
    eps = parts.unet(x_t, t, encoder_hidden_states=cond).sample
    return F.mse_loss(eps * m, noise * m) if m is not None else F.mse_loss(eps, noise)


def train_embeddings(parts: Any, latents: torch.Tensor, prompts: Sequence[str] | Callable[[torch.Tensor], list[str]],
                     params: Sequence[torch.Tensor], *,
                     steps: int, lr: float, batch_size: int, generator: torch.Generator,
                     loss_mask: torch.Tensor | None = None,
                     inject: Callable[[torch.Tensor], contextlib.AbstractContextManager] | None = None,
                     augment: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], tuple] | None = None,
                     progress: Callable[[int, int, dict], None] | None = None) -> list[float]:
    """Adam on ``params`` for ``steps`` steps of :func:`embedding_loss`; returns the loss per step.

    A standalone loop for scripts and tests; learned generators call :func:`embedding_loss`
    from their ``training_step`` instead, so ``fit`` owns checkpoints and resume.
    """
    opt = torch.optim.Adam(list(params), lr=lr)
    losses: list[float] = []
    with torch.enable_grad():
        for step in range(steps):
            loss = embedding_loss(parts, latents, prompts, batch_size=batch_size, generator=generator,
                                  loss_mask=loss_mask, inject=inject, augment=augment)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if progress is not None:
                progress(step + 1, steps, {"loss": losses[-1]})
    return losses


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """A textual-inversion checkpoint as safetensors (never pickle)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(p), metadata=metadata or {})
    return p


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"embedding checkpoint not found: {p}")
    return load_file(str(p))
