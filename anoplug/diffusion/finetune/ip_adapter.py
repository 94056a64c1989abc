"""IP-Adapter-style image prompts (Ye et al. 2023): decoupled cross-attention on a frozen UNet.

An image prompt enters the UNet beside the caption, not through it:

1. a frozen image encoder turns the prompt image into one embedding (CLIP's projected
   image embedding in the paper);
2. a trained *image projection* (Linear → N = 4 tokens of the UNet's context width →
   LayerNorm; diffusers' ``ImageProjection``) turns it into N extra context tokens;
3. every cross-attention layer gets a second key/value pair, ``to_k_ip`` / ``to_v_ip``,
   initialised from its own ``to_k`` / ``to_v``, and adds ``scale · attn(q, k_ip, v_ip)``
   over the image tokens to the usual attention over the text tokens, with the *same* query
   (:class:`DecoupledIPAttnProcessor`, spec §2.3).

Only the projection and the new key/value weights train; the UNet, the VAE, the text
encoder and the image encoder stay frozen. The image tokens are appended to the text
context (``IPAdapter.context``) and each processor splits off the last N, so a plain
``unet(x, t, encoder_hidden_states=context)`` call — any sampler's model call — carries the
image prompt, and the unconditional branch of classifier-free guidance uses the projection of
a zero embedding, as the paper's inference does. ``scale = 0`` gives the base UNet exactly.

**Files.** :func:`save_ip_adapter` writes the layout of the released IP-Adapter weights that
diffusers' ``load_ip_adapter`` reads: one safetensors file with ``image_proj.proj.*`` /
``image_proj.norm.*`` and ``ip_adapter.{k}.to_k_ip.weight`` / ``ip_adapter.{k}.to_v_ip.weight``,
where ``k = 1, 3, 5, …`` numbers the cross-attention layers in the UNet's processor order (the
original numbering of all attention layers, self-attention on the even numbers), plus the image
encoder in ``image_encoder/``. diffusers' loader needs a ``CLIPVisionModelWithProjection`` there
and N = 4 (it does not read N from the file), so :func:`save_ip_adapter` refuses other token
counts, and the offline image encoder is a CLIP vision tower too (:func:`load_image_encoder`):
the committed tiny CLIP's when it is there, else a small random, frozen one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from anoplug.diffusion.attention import attention_input, attention_output
from anoplug.diffusion.finetune.common import ADAM_WEIGHT_DECAY, MAX_GRAD_NORM, fit, noise_prediction_loss
from anoplug.diffusion.finetune.conditioned import ConditionedLatents, encode_pairs, trainable

__all__ = ["NUM_TOKENS", "WEIGHT_NAME", "DecoupledIPAttnProcessor", "IPAdapter", "install_ip_adapter",
           "tiny_image_encoder", "load_image_encoder", "encode_image_prompt", "encode_image_pairs", "ip_adapter_loss",
           "train_ip_adapter", "save_ip_adapter", "load_ip_adapter_weights"]

#: image tokens per prompt (IP-Adapter; diffusers' loader assumes 4 for this layout)
NUM_TOKENS = 4
WEIGHT_NAME = "ip-adapter.safetensors"


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class DecoupledIPAttnProcessor(nn.Module):
    """Cross-attention over the text tokens plus ``scale`` × attention over the last ``num_tokens`` (image) tokens.

    The text part is computed exactly as diffusers' default processor computes it, so
    ``scale = 0`` (the image branch skipped) reproduces the base layer bit for bit. An
    attention mask, if any, applies to the text tokens.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int = NUM_TOKENS,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.num_tokens = int(num_tokens)
        self.scale = float(scale)
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= self.num_tokens:
            raise ValueError(f"{type(self).__name__} needs a context of text tokens followed by {self.num_tokens} "
                             "image tokens (IPAdapter.context)")
        n_text = encoder_hidden_states.shape[1] - self.num_tokens
        text, image = encoder_hidden_states[:, :n_text], encoder_hidden_states[:, n_text:]
        hidden_states, residual, shape = attention_input(attn, hidden_states, temb)
        batch = text.shape[0]
        if attention_mask is not None:
            if attention_mask.shape[-1] == encoder_hidden_states.shape[1]:
                attention_mask = attention_mask[..., :n_text]
            attention_mask = attn.prepare_attention_mask(attention_mask, n_text, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        q = _heads(query, attn.heads)
        k = _heads(attn.to_k(text), attn.heads)
        v = _heads(attn.to_v(text), attn.heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = _merge(F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0,
                                                    is_causal=False)).to(query.dtype)
        if self.scale != 0:
            k_ip = _heads(self.to_k_ip(image), attn.heads)
            v_ip = _heads(self.to_v_ip(image), attn.heads)
            ip = _merge(F.scaled_dot_product_attention(q, k_ip, v_ip, dropout_p=0.0, is_causal=False))
            out = out + self.scale * ip.to(query.dtype)
        return attention_output(attn, out, residual, shape)


class IPAdapter(nn.Module):
    """The trained parts: the image projection and the decoupled processors of every cross-attention layer.

    The processors are also installed in the UNet (they are its attention layers' ``processor``
    sub-modules); this module groups them for the optimiser, the checkpoints and the file.
    """

    def __init__(self, image_proj: nn.Module, processors: dict[str, DecoupledIPAttnProcessor],
                 originals: dict[str, Any]) -> None:
        super().__init__()
        self.image_proj = image_proj
        self.layers = nn.ModuleList(processors.values())
        self.layer_names = list(processors)
        self._originals = originals  # every processor of the UNet before installation (for remove())

    @property
    def num_tokens(self) -> int:
        return int(self.image_proj.num_image_text_embeds)

    @property
    def image_embed_dim(self) -> int:
        return int(self.image_proj.image_embeds.in_features)

    def tokens(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` image embeddings → ``[B, N, context width]`` image tokens."""
        return self.image_proj(image_embeds)

    def context(self, text: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """The UNet's context: the text states followed by the image tokens (a zero embedding for "no image")."""
        tokens = self.tokens(image_embeds).to(text.dtype)
        if len(tokens) != len(text):
            raise ValueError(f"{len(image_embeds)} image embeddings for {len(text)} texts")
        return torch.cat([text, tokens], 1)

    def set_scale(self, scale: float) -> None:
        """The weight of the image branch in every layer (0 switches the image prompt off)."""
        for p in self.layers:
            p.scale = float(scale)

    def remove(self, unet: Any) -> None:
        """Put the UNet's original processors back."""
        unet.set_attn_processor(dict(self._originals))

    def key_ids(self) -> list[int]:
        """The file's layer numbers: 1, 3, 5, … in processor order (diffusers' ``load_ip_adapter`` convention)."""
        return [1 + 2 * j for j in range(len(self.layers))]

    def diffusers_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"image_proj": {proj.*, norm.*}, "ip_adapter": {"k.to_k_ip.weight", …}}``, the released weights' layout."""
        proj = {k.replace("image_embeds.", "proj.", 1): v for k, v in self.image_proj.state_dict().items()}
        ip: dict[str, torch.Tensor] = {}
        for k, layer in zip(self.key_ids(), self.layers):
            ip[f"{k}.to_k_ip.weight"] = layer.to_k_ip.weight
            ip[f"{k}.to_v_ip.weight"] = layer.to_v_ip.weight
        return {"image_proj": proj, "ip_adapter": ip}

    def load_diffusers_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        proj = {k.replace("proj.", "image_embeds.", 1): v for k, v in state["image_proj"].items()}
        self.image_proj.load_state_dict(proj)
        for k, layer in zip(self.key_ids(), self.layers):
            layer.to_k_ip.weight.data.copy_(state["ip_adapter"][f"{k}.to_k_ip.weight"])
            layer.to_v_ip.weight.data.copy_(state["ip_adapter"][f"{k}.to_v_ip.weight"])


def install_ip_adapter(unet: Any, *, image_embed_dim: int, num_tokens: int = NUM_TOKENS, scale: float = 1.0,
                       seed: int = 0) -> IPAdapter:
    """Give every cross-attention layer of ``unet`` a decoupled image branch; return the trainable parts.

    ``to_k_ip`` / ``to_v_ip`` start as copies of the layer's ``to_k`` / ``to_v`` (the paper's
    initialisation); the projection is initialised under ``seed`` without touching the global RNG.
    Freeze the UNet *before* installing (the new weights become UNet sub-modules).
    """
    from diffusers.models.embeddings import ImageProjection

    from anoplug.diffusion.tiny import seeded

    cross = int(unet.config.cross_attention_dim)
    with seeded(seed):
        proj = ImageProjection(image_embed_dim=image_embed_dim, cross_attention_dim=cross,
                               num_image_text_embeds=num_tokens)
    originals = dict(unet.attn_processors)
    procs: dict[str, Any] = {}
    ours: dict[str, DecoupledIPAttnProcessor] = {}
    for name, old in originals.items():
        if name.endswith("attn1.processor"):  # self-attention: unchanged (diffusers' loader decides the same way)
            procs[name] = old
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        p = DecoupledIPAttnProcessor(attn.to_k.out_features, attn.to_k.in_features, num_tokens, scale)
        with torch.no_grad():
            p.to_k_ip.weight.copy_(attn.to_k.weight)
            p.to_v_ip.weight.copy_(attn.to_v.weight)
        procs[name] = ours[name] = p
    if not ours:
        raise ValueError("this UNet has no cross-attention layers to give an image branch")
    unet.set_attn_processor(procs)
    return IPAdapter(proj, ours, originals).to(unet.device)


# -- the image encoder --------------------------------------------------------------------------------------------
def tiny_image_encoder(*, image_size: int = 64, patch_size: int = 8, hidden_size: int = 32, layers: int = 2,
                       heads: int = 4, projection_dim: int = 32, seed: int = 0) -> Any:
    """A small, randomly initialised, frozen ``CLIPVisionModelWithProjection``.

    The fallback when the committed tiny CLIP is absent: untrained, its embedding is a fixed
    random function of the image (it separates images, but weakly). It has the class diffusers'
    ``load_ip_adapter`` loads from ``image_encoder/``.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from anoplug.diffusion.tiny import seeded

    cfg = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                           intermediate_size=hidden_size * 2, num_hidden_layers=layers, num_attention_heads=heads,
                           projection_dim=projection_dim)
    with seeded(seed):
        enc = CLIPVisionModelWithProjection(cfg)
    return enc.requires_grad_(False).eval()


def load_image_encoder(source: str | Path = "auto", device: str | torch.device = "cpu") -> Any:
    """The frozen image encoder of the image prompts, a ``CLIPVisionModelWithProjection``.

    ``"tiny-clip"``: the vision tower of the committed tiny CLIP (:mod:`anoplug.zoo.clip`);
    ``"random"``: :func:`tiny_image_encoder`; ``"auto"``: the tiny CLIP when it is committed,
    else the random one; a directory: a real CLIP image encoder saved locally (an ``image_encoder/``
    folder of the released IP-Adapter weights, or any ``CLIPModel`` folder).
    """
    from transformers import CLIPVisionModelWithProjection

    from anoplug.zoo.clip import TINY_CLIP_DIR

    name = str(source)
    if name == "auto":
        name = "tiny-clip" if (TINY_CLIP_DIR / "model.safetensors").is_file() else "random"
    if name == "random":
        return tiny_image_encoder().to(device)
    d = TINY_CLIP_DIR if name == "tiny-clip" else Path(name)
    if not (d / "config.json").is_file():
        from anoplug.diffusion.base import WeightsNotFoundError

        raise WeightsNotFoundError(f"no CLIP image encoder in {d} (a local folder of CLIPVisionModelWithProjection "
                                   "or CLIPModel weights; nothing is downloaded)")
    from anoplug.diffusion.base import hub_offline

    with hub_offline():
        enc = CLIPVisionModelWithProjection.from_pretrained(str(d), local_files_only=True)
    return enc.requires_grad_(False).eval().to(device)


@torch.no_grad()
def encode_image_prompt(image_encoder: Any, images: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` projected image embeddings of ``images`` (``[B,3,H,W]`` in [0, 1]).

    Preprocessed as the ``CLIPImageProcessor(size=S, crop_size=S)`` that diffusers' loader builds
    for an encoder of image size S (shorter side to S, bicubic, centre crop, CLIP mean/std).
    """
    from anoplug.zoo.clip import ClipPreprocess

    size = int(image_encoder.config.image_size)
    p = next(image_encoder.parameters())
    pixels = ClipPreprocess(size=size, crop=size)(images.to(p.device))
    return image_encoder(pixel_values=pixels.to(p.dtype)).image_embeds


def encode_image_pairs(parts: Any, image_encoder: Any, images: torch.Tensor, prompts: list[str]) -> ConditionedLatents:
    """Training data where each image is its own image prompt (the paper's reconstruction objective)."""
    return encode_pairs(parts, images, prompts, encode_image_prompt(image_encoder, images))


# -- training -----------------------------------------------------------------------------------------------------
def ip_adapter_loss(parts: Any, adapter: IPAdapter, data: ConditionedLatents, *, batch_size: int,
                    generator: torch.Generator, drop_image: float = 0.05, drop_text: float = 0.05,
                    drop_both: float = 0.05) -> torch.Tensor:
    """One step's ε-MSE (:func:`.common.noise_prediction_loss`) with the image prompt and the paper's condition dropout.

    Draws the items, the timesteps and the noise, then one uniform number per item: below
    ``drop_image`` the image embedding is zeroed, in the next ``drop_text`` the caption is
    emptied, in the next ``drop_both`` both are — so classifier-free guidance works on
    either condition (the paper's 0.05 each).
    """
    idx = data.draw(batch_size, generator)

    def context() -> torch.Tensor:
        u = torch.rand(len(idx), generator=generator, device=generator.device).to(data.latents.device)
        no_image = (u < drop_image) | ((u >= drop_image + drop_text) & (u < drop_image + drop_text + drop_both))
        no_text = (u >= drop_image) & (u < drop_image + drop_text + drop_both)
        emb = data.condition[idx]
        emb = torch.where(no_image[:, None], torch.zeros_like(emb), emb)
        text = torch.where(no_text[:, None, None], data.empty_text.expand_as(data.text[idx]), data.text[idx])
        return adapter.context(text, emb)

    return noise_prediction_loss(parts.unet, parts.scheduler, data.latents[idx], context, generator=generator)


def train_ip_adapter(parts: Any, adapter: IPAdapter, data: ConditionedLatents, *, steps: int,
                     generator: torch.Generator, lr: float = 1e-4, batch_size: int = 8,
                     weight_decay: float = ADAM_WEIGHT_DECAY, clip_grad_norm: float | None = MAX_GRAD_NORM,
                     drop_image: float = 0.05, drop_text: float = 0.05, drop_both: float = 0.05,
                     **trainer_options: Any) -> list[dict]:
    """Train the projection and ``to_k_ip``/``to_v_ip`` only (the paper: AdamW lr 1e-4, weight decay 0.01).

    The adapter's current scale is used (AnomalyControl trains at 0.5: ``adapter.set_scale(0.5)``
    first). ``trainer_options`` go to :func:`.common.fit` (checkpoints, resume, accumulation,
    mixed precision, progress). Returns the history.
    """
    parts.freeze()  # the UNet's own weights, and with them the processors inside it ...
    adapter.requires_grad_(True)  # ... of which the adapter's are switched back on
    params = trainable(adapter, "ip_adapter")
    trainer = fit({"ip_adapter": adapter}, list(params.values()),
                  lambda ctx: ip_adapter_loss(parts, adapter, data, batch_size=batch_size, generator=ctx.generator,
                                              drop_image=drop_image, drop_text=drop_text, drop_both=drop_both),
                  steps=steps, generator=generator, lr=lr, weight_decay=weight_decay, clip_grad_norm=clip_grad_norm,
                  checkpoint_params=params, desc="ip_adapter", **trainer_options)
    return trainer.history


# -- files --------------------------------------------------------------------------------------------------------
def save_ip_adapter(adapter: IPAdapter, directory: str | Path, *, image_encoder: Any = None,
                    weight_name: str = WEIGHT_NAME) -> Path:
    """Write ``directory/weight_name`` in the layout ``pipe.load_ip_adapter(directory, subfolder="", weight_name=…)``
    reads, and the image encoder (if given) in ``directory/image_encoder`` where that loader looks for it."""
    from safetensors.torch import save_file

    if adapter.num_tokens != NUM_TOKENS:
        raise ValueError(f"diffusers' load_ip_adapter assumes {NUM_TOKENS} image tokens in this layout; this adapter "
                         f"has {adapter.num_tokens}, and the file would be misread")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    flat = {f"{group}.{k}": v.detach().cpu().contiguous()
            for group, sd in adapter.diffusers_state_dict().items() for k, v in sd.items()}
    meta = {"num_tokens": str(adapter.num_tokens), "image_embed_dim": str(adapter.image_embed_dim),
            "layers": json.dumps(adapter.layer_names)}
    save_file(flat, str(d / weight_name), metadata=meta)
    if image_encoder is not None:
        image_encoder.save_pretrained(str(d / "image_encoder"), safe_serialization=True)
    return d / weight_name


def load_ip_adapter_weights(adapter: IPAdapter, path: str | Path) -> None:
    """Load a file written by :func:`save_ip_adapter` (or a released IP-Adapter safetensors) into ``adapter``."""
    from safetensors.torch import load_file

    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for k, v in load_file(str(path)).items():
        group, _, rest = k.partition(".")
        if group in state:
            state[group][rest] = v
    adapter.load_diffusers_state_dict(state)
