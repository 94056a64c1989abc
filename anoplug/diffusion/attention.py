"""Cross-attention processors: capture attention maps, re-weight logits inside a mask.

One processor class does both, driven by a shared :class:`AttentionState`:

- **capture** (AnomalyAny, SeaS): keep the head-averaged attention probabilities
  ``[B, pixels, tokens]`` of chosen layers;
- **re-weight** (AnomalyDiffusion's adaptive attention re-weighting): multiply the scaled
  logits ``QKᵀ·s`` element-wise by a per-pixel weight on the key columns of chosen tokens,
  *then* apply the softmax. A weight of 1 leaves a pixel's attention untouched.

Recent diffusers drop every ``cross_attention_kwargs`` entry a processor's ``__call__``
does not name (spec §2.3). The weight map and token columns therefore travel as processor
state, or as the explicitly declared keywords ``anoplug_weight`` / ``anoplug_tokens``.

In the sampling loop, the hooks ``CaptureCrossAttention`` and ``ReweightCrossAttention`` of
:mod:`anoplug.diffusion.sampling` install these processors and drive their state per step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["AttentionState", "AnoplugAttnProcessor", "cross_attention_layers", "attention_processors", "attention_input",
           "attention_output", "pixel_softmax"]


@dataclass
class AttentionState:
    """What the processors read (weight map, token columns) and write (captured maps)."""

    #: per-pixel weight ``[B,1,h,w]`` at any resolution (resized per layer), or None for no re-weighting.
    weight: torch.Tensor | None = None
    #: which key columns the weight applies to: bool ``[B, L]`` or ``[L]``.
    tokens: torch.Tensor | None = None
    #: latent size (h, w) used to recover a layer's 2-D shape from its pixel count.
    latent_size: tuple[int, int] | None = None
    #: captured maps: layer name -> list of ``[B, pixels, tokens]`` (one entry per call).
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    #: layers that ran, in call order (to check that every chosen layer was reached).
    calls: list[str] = field(default_factory=list)
    capture: bool = True

    def clear(self) -> None:
        self.maps.clear()
        self.calls.clear()


def _layer_hw(n_pixels: int, latent_size: tuple[int, int] | None) -> tuple[int, int]:
    if latent_size is None:
        s = int(round(math.sqrt(n_pixels)))
        return s, n_pixels // s
    h0, w0 = latent_size
    f = math.sqrt(h0 * w0 / n_pixels)
    return max(1, int(round(h0 / f))), max(1, int(round(w0 / f)))


class AnoplugAttnProcessor:
    """Attention with optional logit re-weighting and map capture (same maths as diffusers' default otherwise)."""

    def __init__(self, name: str, state: AttentionState, *, capture: bool = False, reweight: bool = False) -> None:
        self.name, self.state, self.capture, self.reweight = name, state, capture, reweight

    def _logit_weight(self, weight: torch.Tensor, tokens: torch.Tensor, batch: int, n_pixels: int,
                      n_keys: int, dtype: torch.dtype) -> torch.Tensor:
        """``[B, 1, pixels, keys]`` multiplier: the weight on chosen columns, 1 elsewhere."""
        h, w = _layer_hw(n_pixels, self.state.latent_size)
        wmap = F.interpolate(weight.float(), size=(h, w), mode="bilinear", align_corners=False).flatten(1)  # [B, N]
        if wmap.shape[0] != batch:  # classifier-free guidance doubles the batch
            wmap = wmap.repeat(batch // wmap.shape[0], 1)
        cols = tokens.bool()
        cols = cols.expand(batch, -1) if cols.ndim == 1 or cols.shape[0] == 1 else cols.repeat(batch // cols.shape[0], 1)
        cols = cols[:, :n_keys].to(wmap.device)
        mult = torch.where(cols[:, None, :], wmap[:, :, None], torch.ones((), device=wmap.device))
        return mult[:, None].to(dtype)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 anoplug_weight: torch.Tensor | None = None, anoplug_tokens: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states, residual, shape = attention_input(attn, hidden_states, temb)
        is_cross = encoder_hidden_states is not None
        batch, seq_len, _ = (encoder_hidden_states if is_cross else hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        context = hidden_states if not is_cross else (
            attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))

        logits = torch.bmm(q.float(), k.float().transpose(1, 2)) * attn.scale  # [B*heads, N, L]
        if attention_mask is not None:
            logits = logits + attention_mask.float()
        heads = logits.shape[0] // batch
        n_pix, n_keys = logits.shape[1], logits.shape[2]
        weight = anoplug_weight if anoplug_weight is not None else self.state.weight
        tokens = anoplug_tokens if anoplug_tokens is not None else self.state.tokens
        if self.reweight and is_cross and weight is not None and tokens is not None:
            mult = self._logit_weight(weight.to(logits.device), tokens, batch, n_pix, n_keys, logits.dtype)
            logits = (logits.view(batch, heads, n_pix, n_keys) * mult).view_as(logits)
        probs = logits.softmax(dim=-1)
        if self.capture and self.state.capture:
            self.state.maps.setdefault(self.name, []).append(probs.view(batch, heads, n_pix, n_keys).mean(1))
        self.state.calls.append(self.name)

        return attention_output(attn, attn.batch_to_head_dim(torch.bmm(probs.to(v.dtype), v)), residual, shape)


def attention_input(attn: Any, hidden_states: torch.Tensor,
                    temb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...] | None]:
    """The prologue every diffusers attention processor runs: spatial and group norm, ``[B,C,H,W]`` to tokens.

    Returns the tokens, the residual and the 4-D shape to restore (None for token inputs).
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = tuple(hidden_states.shape) if hidden_states.ndim == 4 else None
    if shape is not None:
        b, c, h, w = shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, residual, shape


def attention_output(attn: Any, out: torch.Tensor, residual: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
    """The matching epilogue: output projection, back to ``[B,C,H,W]``, residual, rescale."""
    out = attn.to_out[1](attn.to_out[0](out))
    if shape is not None:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def cross_attention_layers(unet: Any) -> list[str]:
    """Processor names of every cross-attention (``attn2``) layer."""
    return [n for n in unet.attn_processors if n.endswith("attn2.processor")]


@contextlib.contextmanager
def attention_processors(unet: Any, state: AttentionState, *, capture: Callable[[str], bool] | list[str] | None = None,
                         reweight: Callable[[str], bool] | list[str] | None = None) -> Iterator[AttentionState]:
    """Install anoplug processors on every ``attn2`` layer for the ``with`` block, then restore the originals.

    ``capture`` / ``reweight`` choose layers by name list or predicate (default: none / all ``attn2``).
    """
    def chooser(sel: Callable[[str], bool] | list[str] | None, default: bool) -> Callable[[str], bool]:
        if sel is None:
            return lambda n: default
        if callable(sel):
            return sel
        names = set(sel)
        return lambda n: n in names

    cap, rew = chooser(capture, False), chooser(reweight, True)
    original = dict(unet.attn_processors)
    procs: dict[str, Any] = {}
    for name, proc in original.items():
        if name.endswith("attn2.processor"):
            procs[name] = AnoplugAttnProcessor(name, state, capture=cap(name), reweight=rew(name))
        else:
            procs[name] = proc
    unet.set_attn_processor(procs)
    try:
        yield state
    finally:
        unet.set_attn_processor(original)


def pixel_softmax(maps: torch.Tensor) -> torch.Tensor:
    """The softmax over the pixel axis (dim −2) that SeaS's loss maps use.

    SeaS applies it to the raw per-head logits ``QKᵀ·s``, not to the token-softmaxed, head-averaged
    probabilities that the capture mode stores (``anoplug_seas.maps`` wraps the processors for that)."""
    return maps.softmax(dim=-2)
