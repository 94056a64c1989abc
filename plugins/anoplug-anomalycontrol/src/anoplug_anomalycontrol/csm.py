"""Cross-modal Semantic Modeling (CSM, paper step 1): a frozen BLIP-2 Q-Former reads a reference anomaly and its caption.

The official code (LAVIS ``blip2_feature_extractor``, "pretrain", ``extract_features_with_ref_mask``)
runs the ViT on the reference image, applies ``ln_vision``, and lets the 32 learned queries of
the Q-Former attend to the patch tokens while they also self-attend with the caption tokens
(``mode="multimodal"``). The first 32 output states (one per query, 768-d) are the
*multimodal embeddings*; the training and inference datasets average them over the queries
into one 768-d vector (``datasets.py``).

Here the same model is transformers' ``Blip2ForImageTextRetrieval`` (the port of the LAVIS
first-stage "pretrain" model: ``vision_model`` + ``query_tokens`` + ``embeddings`` + ``qformer``),
loaded from a local BLIP-2 directory (e.g. a saved ``Salesforce/blip2-itm-vit-g``) or built
tiny from a config. Eager attention is forced: SDPA does not return the attention
probabilities ASEA needs. transformers' vision tower applies its ``post_layernorm``, which is
LAVIS' ``ln_vision``, so a visual prompt added to ``last_hidden_state`` is added where the
official one is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CSM", "CSMOutput", "tiny_blip2", "load_blip2", "TINY", "MAX_TEXT_LENGTH"]

#: LAVIS Blip2Qformer ``max_txt_len`` (the caption is truncated to it)
MAX_TEXT_LENGTH = 32

#: The CPU stand-in of the paper's EVA-ViT-g + BERT-base Q-Former (32 queries, 768-d, cross-attention
#: every 2nd layer): ViT 64 px / patch 8 (an 8×8 grid; the spec's 32 px gives a 4×4 grid that misses
#: most toy defects), Q-Former hidden 32, 2 layers, cross-attention in every layer, 4 queries. Its weights
#: are drawn with std 0.3 instead of BERT's 0.02 (our assumption): a random Q-Former at 0.02 attends almost
#: uniformly and ASEA moves its in-mask mass by ~0.001 (0.070 → 0.071 on toy masks); at 0.3 by 0.07 → 0.63.
TINY: dict[str, Any] = {
    "vision": {"image_size": 64, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4},
    "qformer": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                "cross_attention_frequency": 1, "max_position_embeddings": 64, "initializer_range": 0.3},
    "num_query_tokens": 4,
}


@dataclass
class CSMOutput:
    """``features [B, Q, H]`` (the multimodal query states) and ``attention [B, P]`` over the patch grid."""

    features: torch.Tensor
    attention: torch.Tensor

    @property
    def pooled(self) -> torch.Tensor:
        """``[B, H]``: the mean over the queries, what the SGA consumes (official ``torch.mean(dim=1)``)."""
        return self.features.mean(1)


def tiny_blip2(vocab_size: int, seed: int = 0) -> Any:
    """A small random ``Blip2ForImageTextRetrieval`` (frozen, eager attention) for the offline path.

    Why random: no BLIP-2 can be had offline, and its role here is a fixed image+text → query
    feature map with cross-attention that ASEA can steer; the shipped checkpoint stores these
    weights so the trained SGA always sees the same features.
    """
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    from anoplug.diffusion.tiny import seeded

    cfg = Blip2Config(vision_config=dict(TINY["vision"]),
                      qformer_config={**TINY["qformer"], "vocab_size": int(vocab_size),
                                      "encoder_hidden_size": TINY["vision"]["hidden_size"],
                                      "use_qformer_text_input": True, "hidden_dropout_prob": 0.0,
                                      "attention_probs_dropout_prob": 0.0},
                      num_query_tokens=TINY["num_query_tokens"], image_text_hidden_size=TINY["qformer"]["hidden_size"])
    cfg._attn_implementation = "eager"
    with seeded(seed):
        model = Blip2ForImageTextRetrieval(cfg)
    return model.requires_grad_(False).eval()


def load_blip2(directory: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local BLIP-2 image-text-retrieval directory; nothing is downloaded."""
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    from anoplug.diffusion.base import WeightsNotFoundError, hub_offline

    d = Path(directory).expanduser()
    if not (d / "config.json").is_file():
        raise WeightsNotFoundError(f"no BLIP-2 model in {d}: pass a local directory of Blip2ForImageTextRetrieval "
                                   "weights (e.g. Salesforce/blip2-itm-vit-g saved with save_pretrained); nothing "
                                   "is downloaded")
    with hub_offline():
        model = Blip2ForImageTextRetrieval.from_pretrained(str(d), local_files_only=True, attn_implementation="eager")
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    return model.requires_grad_(False).eval(), tok


class CSM(nn.Module):
    """The frozen Q-Former feature extractor with an optional additive visual prompt (ASEA's e_g).

    ``forward(images01, captions, prompt=None)`` → :class:`CSMOutput`. ``attention`` is the
    official relevance map: the Q-Former cross-attention probabilities averaged over layers,
    heads and queries, the CLS key dropped, so one value per patch (it sums to ≤ 1).
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def grid(self) -> int:
        return self.image_size // int(self.model.config.vision_config.patch_size)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.qformer_config.hidden_size)

    @property
    def vision_width(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    def pixel_values(self, images01: torch.Tensor) -> torch.Tensor:
        """BLIP's eval transform: bicubic resize to the ViT size, CLIP mean/std (LAVIS ``blip_image_eval``)."""
        from anoplug.zoo.clip import ClipPreprocess

        s = self.image_size
        return ClipPreprocess(size=s, crop=s)(images01.float())

    def grid_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``[B,1,H,W]`` → ``[B, P]``: nearest to the ViT size, then nearest to the patch grid (official)."""
        m = F.interpolate(mask.float(), size=(self.image_size, self.image_size), mode="nearest")
        return F.interpolate(m, size=(self.grid, self.grid), mode="nearest").flatten(1)

    def image_embeds(self, images01: torch.Tensor) -> torch.Tensor:
        """The frozen ViT tokens after its final LayerNorm (LAVIS ``ln_vision(visual_encoder(x))``), ``[B, P+1, C]``."""
        p = next(self.model.parameters())
        with torch.no_grad():
            return self.model.vision_model(pixel_values=self.pixel_values(images01).to(p.device, p.dtype)
                                           ).last_hidden_state.detach()

    def tokenize(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tokenizer(list(captions), return_tensors="pt", padding=True, truncation=True,
                           max_length=MAX_TEXT_LENGTH)
        return t.input_ids.to(device), t.attention_mask.to(device)

    def forward(self, images01: torch.Tensor | None, captions: list[str], prompt: torch.Tensor | None = None, *,
                image_embeds: torch.Tensor | None = None) -> CSMOutput:
        emb = self.image_embeds(images01) if image_embeds is None else image_embeds
        if prompt is not None:
            emb = emb + prompt  # ASEA: e_g added to the frozen patch tokens
        b = emb.shape[0]
        ids, am = self.tokenize(captions, emb.device)
        queries = self.model.query_tokens.expand(b, -1, -1)
        q = queries.shape[1]
        hidden = self.model.embeddings(input_ids=ids, query_embeds=queries)
        mask = torch.cat([torch.ones(b, q, dtype=am.dtype, device=am.device), am], 1)
        out = self.model.qformer(query_embeds=hidden, query_length=q, attention_mask=mask,
                                 encoder_hidden_states=emb,
                                 encoder_attention_mask=torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device),
                                 output_attentions=True, return_dict=True)
        maps = [a for a in (out.cross_attentions or ()) if isinstance(a, torch.Tensor)]
        if not maps:
            raise RuntimeError("the Q-Former returned no cross-attention maps (eager attention is required)")
        att = torch.stack(maps, 0).mean(0)  # layers → [B, heads, Q, P+1]
        rel = att[..., 1:].mean(1).mean(1)  # CLS key dropped, heads and queries averaged → [B, P]
        return CSMOutput(out.last_hidden_state[:, :q], rel)
