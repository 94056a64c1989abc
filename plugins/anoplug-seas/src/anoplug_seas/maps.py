"""Decoupled Anomaly Alignment (DA): pixel-softmax cross-attention maps and their loss (SeaS step 3).

SeaS binds its tokens to image regions by regressing cross-attention maps onto the
defect mask. Those maps are *not* the attention the UNet uses (softmax over the tokens):
the official code recomputes the scaled logits ``QKᵀ·s`` and takes the softmax over the
**pixel** axis (dim −2), so each token's map is a distribution over the image
(``_attention_processor.py``). This module

1. installs a processor wrapper on the chosen cross-attention layers that leaves the
   layer's own output untouched (it calls the original processor) and stores the
   head-averaged pixel-softmax maps in the toolkit's :class:`AttentionState`;
2. averages the layers of one down block (SD's down blocks have two transformers);
3. reads the normal-token map (``ob1``) and the mean map of the 4 anomaly tokens,
   each min-max normalised over the **whole batch tensor** (not per sample);
4. builds the targets: mask → bilinear to the latent size → max-pool ×2 per level below;
5. L_DA = MSE(anomaly map, target) + MSE(normal map inside the mask, 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from anoplug.diffusion.attention import AttentionState, attention_input, pixel_softmax

__all__ = ["PixelSoftmaxCapture", "capture_pixel_maps", "down_block_layers", "block_map", "normalised_token_maps",
           "da_targets", "da_loss"]


class PixelSoftmaxCapture:
    """Wraps a cross-attention processor: same output, plus the pixel-softmax maps ``[B, pixels, tokens]``.

    The maps are recomputed from the layer's own ``to_q`` / ``to_k`` (as the official code
    does), so they carry gradients to the UNet and, through the keys, to the token table.
    """

    def __init__(self, name: str, inner: Any, state: AttentionState) -> None:
        self.name, self.inner, self.state = name, inner, state

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, temb=temb, **kw)
        if encoder_hidden_states is not None and self.state.capture:
            h, _, _ = attention_input(attn, hidden_states, temb)
            ctx = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            q = attn.head_to_batch_dim(attn.to_q(h))
            k = attn.head_to_batch_dim(attn.to_k(ctx))
            logits = torch.bmm(q.float(), k.float().transpose(1, 2)) * attn.scale  # [B*heads, pixels, tokens]
            probs = pixel_softmax(logits)  # over the pixel axis (dim −2), not over the tokens
            b = encoder_hidden_states.shape[0]
            self.state.maps.setdefault(self.name, []).append(probs.view(b, -1, *probs.shape[1:]).mean(1))
        self.state.calls.append(self.name)
        return out


def down_block_layers(unet: Any, blocks: Sequence[int]) -> dict[int, list[str]]:
    """The cross-attention (``attn2``) processor names of each chosen down block."""
    names = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    out = {b: [n for n in names if n.startswith(f"down_blocks.{b}.")] for b in blocks}
    empty = [b for b, v in out.items() if not v]
    if empty:
        raise ValueError(f"down blocks {empty} have no cross-attention layer (the UNet has "
                         f"{len(unet.down_blocks)} down blocks)")
    return out


@contextlib.contextmanager
def capture_pixel_maps(unet: Any, layers: Sequence[str]) -> Iterator[AttentionState]:
    """Within the block, ``layers`` store their pixel-softmax maps in the yielded state; originals come back after."""
    original = dict(unet.attn_processors)
    state = AttentionState()
    chosen = set(layers)
    unet.set_attn_processor({n: PixelSoftmaxCapture(n, p, state) if n in chosen else p for n, p in original.items()})
    try:
        yield state
    finally:
        unet.set_attn_processor(original)


def block_map(state: AttentionState, layers: Sequence[str]) -> torch.Tensor:
    """The mean over a block's layers of their latest maps, ``[B, pixels, tokens]`` (step 2)."""
    missing = [n for n in layers if not state.maps.get(n)]
    if missing:
        raise RuntimeError(f"no attention maps were captured for {missing}")
    return torch.stack([state.maps[n][-1] for n in layers]).mean(0)


def _minmax(m: torch.Tensor) -> torch.Tensor:
    """Min-max over the whole tensor (every sample of the batch together), as the official code."""
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def normalised_token_maps(maps: torch.Tensor, normal_cols: Sequence[int], anomaly_cols: Sequence[int],
                          size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(normal map, anomaly map), each ``[B, 1, h, w]``: token columns averaged, then batch-wide min-max (step 3)."""
    b = maps.shape[0]
    normal = maps[:, :, list(normal_cols)].mean(-1).view(b, 1, *size)
    anomaly = maps[:, :, list(anomaly_cols)].mean(-1).view(b, 1, *size)
    return _minmax(normal), _minmax(anomaly)


def da_targets(mask: torch.Tensor, latent_size: int, sizes: Sequence[int]) -> dict[int, torch.Tensor]:
    """Mask targets per map size (step 4): bilinear to the latent size, then 2×2 max-pools down to each size."""
    t = F.interpolate(mask.float(), size=(latent_size, latent_size), mode="bilinear", align_corners=False)
    out: dict[int, torch.Tensor] = {}
    for s in sorted(set(sizes), reverse=True):
        while t.shape[-1] > s:
            t = F.max_pool2d(t, kernel_size=2, stride=2)
        if t.shape[-1] != s:
            raise ValueError(f"map size {s} is not the latent size {latent_size} halved a whole number of times")
        out[s] = t
    return out


def da_loss(normal: torch.Tensor, anomaly: torch.Tensor, target: torch.Tensor,
            normal_region: str = "full") -> torch.Tensor:
    """MSE(anomaly map, target) + MSE(normal map, 0) where the target is 1 (step 5).

    ``normal_region="full"`` takes the cells whose target is exactly 1 (the MVTec rule),
    ``"any"`` those above 0 (the VisA / MVTec-3D rule for tiny defects). With no such cell
    the normal term is 0 (the official code would give NaN).
    """
    loss = F.mse_loss(anomaly.float(), target.float())
    region = target == 1 if normal_region == "full" else target > 0
    if bool(region.any()):
        loss = loss + normal.float()[region].pow(2).mean()
    return loss
