"""Anomaly-Semantic Enhanced Attention (ASEA, paper step 2): steer the Q-Former's attention into the reference mask.

Why: a reference anomaly image is mostly normal product; its caption names the defect, but the
queries would read the whole image. ASEA adds a learnable visual prompt e_g to the frozen ViT
tokens and optimises it, per reference, so that the Q-Former's cross-attention mass falls
inside the reference anomaly mask. The official code (``extract_features_with_ref_mask``):

1. e_g = zeros of the ViT token shape ``[1, P+1, C]`` (the CLS token included);
2. **5** Adam steps at lr **0.1** on e_g alone (ViT and Q-Former frozen);
3. loss = (1 − Σ_mask A / Σ A)², A the relevance map of :class:`~anoplug_anomalycontrol.csm.CSM`
   (cross-attention averaged over layers, heads and queries, CLS dropped), the mask resized
   224 → 16 × 16 by nearest neighbour;
4. the features used downstream are those of the *last forward pass*, i.e. of the prompt after
   4 updates (the 5th update is computed and discarded) — reproduced.

The steps run on :class:`anoplug.train.Trainer` (every optimisation loop in anoplug does). A batch
of references is optimised at once with one prompt each and the *sum* of their losses: Adam is
element-wise, so each prompt follows exactly the updates a run of its own would make.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from anoplug_anomalycontrol.csm import CSM, CSMOutput

__all__ = ["VisualPrompt", "in_mask_fraction", "asea_loss", "ASEAResult", "run_asea", "ASEA_STEPS", "ASEA_LR"]

ASEA_STEPS = 5  # official num_steps
ASEA_LR = 0.1  # official Adam lr


class VisualPrompt(nn.Module):
    """e_g: one additive prompt per reference over every ViT token (zeros at the start, as the official code)."""

    def __init__(self, n: int, tokens: int, width: int) -> None:
        super().__init__()
        self.prompt = nn.Parameter(torch.zeros(n, tokens, width))


def in_mask_fraction(attention: torch.Tensor, grid_mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: Σ_mask A / Σ A for relevance maps ``[B, P]`` and grid masks ``[B, P]`` in {0, 1}."""
    return (attention * grid_mask).sum(-1) / attention.sum(-1).clamp_min(1e-12)


def asea_loss(attention: torch.Tensor, grid_mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: the official ``compute_ca_loss`` per reference, (1 − in-mask fraction)²."""
    return (1 - in_mask_fraction(attention, grid_mask)) ** 2


@dataclass
class ASEAResult:
    """The features to use, the relevance maps before (e_g = 0) and at the used pass, and the per-step log."""

    output: CSMOutput
    before: torch.Tensor
    history: list[dict] = field(default_factory=list)
    prompt: torch.Tensor | None = None


def run_asea(csm: CSM, images01: torch.Tensor, masks: torch.Tensor, captions: list[str], *,
             steps: int = ASEA_STEPS, lr: float = ASEA_LR, seed: int = 0) -> ASEAResult:
    """Optimise one visual prompt per reference (``steps`` Adam updates); return the last forward's features.

    ``steps = 0`` skips ASEA: the plain multimodal features (LAVIS ``extract_features``).
    ``seed`` only seeds the Trainer's generator (ASEA itself draws nothing).
    """
    from anoplug.train import Trainer

    emb = csm.image_embeds(images01)
    gmask = csm.grid_mask(masks).to(emb.device)
    with torch.no_grad():
        plain = csm(None, captions, image_embeds=emb)
    if steps <= 0:
        return ASEAResult(plain, plain.attention, [])
    vp = VisualPrompt(emb.shape[0], emb.shape[1], emb.shape[2]).to(emb.device)
    last: dict[str, CSMOutput] = {}

    def step(ctx: object) -> dict:
        out = csm(None, captions, vp.prompt, image_embeds=emb)
        last["out"] = CSMOutput(out.features.detach(), out.attention.detach())
        frac = in_mask_fraction(out.attention, gmask)
        return {"loss": asea_loss(out.attention, gmask).sum(), "in_mask_fraction": float(frac.detach().mean())}

    opt = torch.optim.Adam(vp.parameters(), lr=lr)
    with torch.enable_grad():
        trainer = Trainer({"visual_prompt": vp}, {"asea": opt}, step, steps=int(steps),
                          generator=torch.Generator().manual_seed(seed), desc="asea")
        history = trainer.fit()
    return ASEAResult(last["out"], plain.attention, history, vp.prompt.detach())
