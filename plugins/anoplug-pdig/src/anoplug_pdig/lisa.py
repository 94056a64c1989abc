"""LISA, the Lightweight Industrial Style Adaptor: a second, disentangled cross-attention branch over style tokens.

*Paper*: LISA "injects industrial defect characteristics into the SD model through
cross-disentangled attention". *Our assumption* for the reachable abstract's words (the method
section is not reachable here): every cross-attention layer of the frozen UNet keeps its text
attention untouched and gets a second key/value pair over a few *style tokens*; the two
attentions share the query but have their own keys, values and softmax (so text content and
industrial style do not compete for the same attention mass: "disentangled"), and their outputs
add, the style one weighted by ``scale`` (the decoupled cross-attention of IP-Adapter, which the
toolkit also implements in :mod:`anoplug.diffusion.finetune.ip_adapter`). The style tokens come
from one learned style code per defect type through a linear projection and a LayerNorm.

The processor also records the text-attention probabilities of the pass (head-averaged,
``[B, pixels, tokens]``, with gradients when the pass has them), which TIDSC's positional
consistency reads; the toolkit's capture processor cannot be stacked on a processor that has
its own branch, so the record lives here.

``scale = 0`` skips the style branch and gives the base layer's output exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from anoplug.diffusion.attention import attention_input, attention_output

__all__ = ["LisaAttnProcessor", "StyleAdaptor", "installed"]


class LisaAttnProcessor(nn.Module):
    """Text cross-attention (as diffusers computes it) + ``scale`` × attention over the last ``num_tokens`` tokens."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int, scale: float = 1.0) -> None:
        super().__init__()
        self.num_tokens = int(num_tokens)
        self.scale = float(scale)
        self.to_k_style = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_style = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.record: list[torch.Tensor] | None = None  # text attention maps of each call, when a list

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= self.num_tokens:
            raise ValueError(f"{type(self).__name__} needs text tokens followed by {self.num_tokens} style tokens")
        n_text = encoder_hidden_states.shape[1] - self.num_tokens
        text, style = encoder_hidden_states[:, :n_text], encoder_hidden_states[:, n_text:]
        hidden_states, residual, shape = attention_input(attn, hidden_states, temb)
        batch = text.shape[0]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask[..., :n_text], n_text, batch)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(text))
        v = attn.head_to_batch_dim(attn.to_v(text))
        probs = attn.get_attention_scores(q, k, attention_mask)  # [B*heads, pixels, text tokens]
        if self.record is not None:
            self.record.append(probs.view(batch, -1, *probs.shape[1:]).mean(1))
        out = torch.bmm(probs, v)
        if self.scale != 0:  # the disentangled style branch: its own keys, values and softmax
            ks = attn.head_to_batch_dim(self.to_k_style(style))
            vs = attn.head_to_batch_dim(self.to_v_style(style))
            out = out + self.scale * torch.bmm(attn.get_attention_scores(q, ks, None), vs)
        return attention_output(attn, attn.batch_to_head_dim(out), residual, shape)


class StyleAdaptor(nn.Module):
    """The trained parts of LISA: style codes, their projection to tokens, and the style keys/values per layer."""

    def __init__(self, unet: Any, n_types: int, *, num_tokens: int = 4, code_dim: int = 64, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        cross = int(unet.config.cross_attention_dim)
        self.num_tokens, self.cross = int(num_tokens), cross
        self.codes = nn.Parameter(torch.randn(n_types, code_dim, generator=generator) * 0.02)
        self.proj = nn.Linear(code_dim, num_tokens * cross)
        with torch.no_grad():  # a seeded init (nn.Linear's own would read the global RNG)
            bound = 1.0 / code_dim ** 0.5
            self.proj.weight.copy_((torch.rand(self.proj.weight.shape, generator=generator) * 2 - 1) * bound)
            self.proj.bias.zero_()
        self.norm = nn.LayerNorm(cross)
        self.layer_names = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
        layers = []
        for name in self.layer_names:
            attn = unet.get_submodule(name[: -len(".processor")])
            p = LisaAttnProcessor(attn.to_k.out_features, attn.to_k.in_features, num_tokens, scale)
            with torch.no_grad():  # start from the layer's own text keys/values (IP-Adapter's initialisation)
                p.to_k_style.weight.copy_(attn.to_k.weight)
                p.to_v_style.weight.copy_(attn.to_v.weight)
            layers.append(p)
        self.layers = nn.ModuleList(layers)

    def tokens(self, type_index: torch.Tensor) -> torch.Tensor:
        """``[B]`` defect-type indices → ``[B, num_tokens, cross]`` style tokens."""
        return self.norm(self.proj(self.codes[type_index]).view(len(type_index), self.num_tokens, self.cross))

    def set_scale(self, scale: float) -> None:
        for p in self.layers:
            p.scale = float(scale)

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Within the block every layer appends its text-attention maps to ``maps[layer name]``."""
        maps: dict[str, list[torch.Tensor]] = {}
        for n, p in zip(self.layer_names, self.layers):
            p.record = maps.setdefault(n, [])
        try:
            yield maps
        finally:
            for p in self.layers:
                p.record = None


@contextlib.contextmanager
def installed(unet: Any, adaptor: StyleAdaptor) -> Iterator[StyleAdaptor]:
    """LISA's processors on ``unet``'s cross-attention layers for the block; the originals come back after.

    The base model is shared by every generator of a process, so the adaptor is never left in it.
    """
    original = dict(unet.attn_processors)
    procs = dict(original)
    for n, p in zip(adaptor.layer_names, adaptor.layers):
        procs[n] = p
    unet.set_attn_processor(procs)
    try:
        yield adaptor
    finally:
        unet.set_attn_processor(original)
