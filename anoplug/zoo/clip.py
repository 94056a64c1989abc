"""CLIP for the multi-modal methods: the committed tiny one, any real one from a local folder, zero-shot.

The methods that need CLIP (AnomalyAny: ViT-L/14; AnomalyControl and the other multi-modal
methods: ViT-B/32, ViT-H/14) use it through three things only: an image tower, a text tower
and their shared, L2-normalised embedding space. This module gives exactly those three
for any ``transformers.CLIPModel`` folder:

- :func:`load_clip` — ``load_clip("tiny")`` is the committed offline model
  (``anoplug/assets/tiny_clip``, trained by ``tools/train_tiny_clip.py`` on toy images and
  captions); ``load_clip("/models/clip-vit-large-patch14")`` is a real checkpoint saved
  locally. Both go through ``CLIPModel.from_pretrained(dir)`` and ``CLIPTokenizer``;
- :class:`ClipPreprocess` — CLIP's image preprocessing (shorter side → size, bicubic,
  centre crop, CLIP mean/std) as tensor ops, so gradients reach the image (the CLIP losses
  of test-time optimisation need that; ``CLIPImageProcessor`` works on PIL/numpy);
- :func:`encode_images` / :func:`encode_texts` / :func:`zero_shot` — normalised embeddings
  and zero-shot classification with prompt ensembles (CLIP, Radford et al. 2021, §3.1);
- :func:`contrastive_loss` — CLIP's symmetric InfoNCE, with every image of one exact
  caption a positive for it (the toy captions of normal images repeat);
- :func:`toy_category_prompts` / :func:`toy_defect_prompts` — the zero-shot prompts the
  tiny model is measured with (docs/zoo.md).

Nothing here downloads: a name that is not ``"tiny"`` must be a local folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["TINY_CLIP_DIR", "CLIP_MEAN", "CLIP_STD", "ClipPreprocess", "load_clip", "save_clip", "tiny_clip_config",
           "encode_images", "encode_texts", "tokenize", "TEMPLATES", "ZeroShot", "zero_shot", "contrastive_loss",
           "caption_groups", "toy_category_prompts", "toy_defect_prompts", "DEFECT_NAMES"]

#: The committed tiny CLIP (``tools/train_tiny_clip.py``; docs/zoo.md).
TINY_CLIP_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_clip"

#: OpenAI CLIP's image normalisation (also used by the tiny model, so both paths preprocess alike).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPreprocess:
    """Images ``[B, 3, H, W]`` in [0, 1] → CLIP ``pixel_values``: resize shorter side, centre crop, normalise.

    Tensor ops only (differentiable), mirroring ``CLIPImageProcessor`` (bicubic resize of the
    shorter side to ``size``, centre crop ``crop``, CLIP mean/std).
    """

    size: int
    crop: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        x = images.float()
        h, w = x.shape[-2:]
        if min(h, w) != self.size:
            scale = self.size / min(h, w)
            x = F.interpolate(x, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
                              mode="bicubic", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        x = x[..., top:top + self.crop, left:left + self.crop]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @classmethod
    def from_dir(cls, directory: str | Path, image_size: int) -> ClipPreprocess:
        """From the folder's ``preprocessor_config.json`` (``CLIPImageProcessor`` format), else CLIP defaults."""
        cfg_path = Path(directory) / "preprocessor_config.json"
        if not cfg_path.is_file():
            return cls(size=image_size, crop=image_size)
        cfg = json.loads(cfg_path.read_text())
        size = cfg.get("size", image_size)
        size = size.get("shortest_edge", size.get("height", image_size)) if isinstance(size, dict) else size
        crop = cfg.get("crop_size", size)
        crop = crop.get("height", size) if isinstance(crop, dict) else crop
        return cls(size=int(size), crop=int(crop), mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
                   std=tuple(cfg.get("image_std", CLIP_STD)))


def tiny_clip_config(tokenizer: Any, *, image_size: int = 64, patch_size: int = 8, vision_width: int = 128,
                     vision_layers: int = 4, text_width: int = 64, text_layers: int = 3, projection_dim: int = 64) -> Any:
    """The ``CLIPConfig`` of the tiny model: a ViT image tower and a causal text tower sized to ``tokenizer``."""
    from transformers import CLIPConfig

    text = {"vocab_size": len(tokenizer), "hidden_size": text_width, "intermediate_size": 4 * text_width,
            "num_hidden_layers": text_layers, "num_attention_heads": max(text_width // 32, 1),
            "max_position_embeddings": int(tokenizer.model_max_length), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "projection_dim": projection_dim}
    vision = {"hidden_size": vision_width, "intermediate_size": 4 * vision_width, "num_hidden_layers": vision_layers,
              "num_attention_heads": max(vision_width // 32, 1), "image_size": image_size, "patch_size": patch_size,
              "projection_dim": projection_dim}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def load_clip(path_or_name: str | Path = "tiny", *, device: torch.device | str = "cpu") -> tuple[Any, Any, ClipPreprocess]:
    """``(CLIPModel, CLIPTokenizer, ClipPreprocess)`` from a local folder, or the committed tiny model for ``"tiny"``.

    The folder is what ``CLIPModel.save_pretrained`` + ``CLIPTokenizer.save_pretrained`` (+
    optionally ``CLIPImageProcessor.save_pretrained``) write — the layout of every CLIP on the
    Hugging Face hub, so a real checkpoint downloaded elsewhere loads the same way. The model
    comes back frozen and in eval mode (the methods use CLIP as a fixed judge); call
    ``requires_grad_(True)`` to fine-tune it.
    """
    from transformers import CLIPModel, CLIPTokenizer

    from anoplug.diffusion.base import WeightsNotFoundError, check_tokenizer, hub_offline

    d = TINY_CLIP_DIR if str(path_or_name) == "tiny" else Path(path_or_name)
    if not (d / "config.json").is_file():
        hint = ("restore it from git or rebuild it with the command in docs/zoo.md" if d == TINY_CLIP_DIR else
                "pass a local folder written by CLIPModel.save_pretrained (nothing is downloaded)")
        raise WeightsNotFoundError(f"no CLIP model in {d}: {hint}")
    with hub_offline():
        model = CLIPModel.from_pretrained(str(d), local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(d), local_files_only=True)
    check_tokenizer(tokenizer, f"CLIP tokenizer in {d}", fix=f"{d} lacks its tokenizer files (vocab.json, merges.txt)")
    model.eval().requires_grad_(False)
    return model.to(device), tokenizer, ClipPreprocess.from_dir(d, int(model.config.vision_config.image_size))


def save_clip(model: Any, tokenizer: Any, directory: str | Path, preprocess: ClipPreprocess | None = None) -> Path:
    """Write the folder :func:`load_clip` reads: safetensors weights, tokenizer files, ``preprocessor_config.json``."""
    from transformers import CLIPImageProcessor

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(d), safe_serialization=True)
    tokenizer.save_pretrained(str(d))
    size = int(model.config.vision_config.image_size)
    p = preprocess or ClipPreprocess(size=size, crop=size)
    CLIPImageProcessor(size={"shortest_edge": p.size}, crop_size={"height": p.crop, "width": p.crop},
                       image_mean=list(p.mean), image_std=list(p.std)).save_pretrained(str(d))
    for f in d.iterdir():  # the weights file is written owner-only; a committed asset is world-readable
        if f.is_file():
            f.chmod(0o644)
    return d


def _pooled(out: Any) -> torch.Tensor:
    """transformers ≥ 5 returns an output object from ``get_*_features``; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def encode_images(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` unit-norm image embeddings of preprocessed ``pixel_values``."""
    return F.normalize(_pooled(model.get_image_features(pixel_values=pixel_values)), dim=-1)


def tokenize(tokenizer: Any, texts: Sequence[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Padded, truncated ids and attention mask (CLIP pools at the first end-of-text token)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def encode_texts(model: Any, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """``[N, D]`` unit-norm text embeddings."""
    device = next(model.parameters()).device
    return F.normalize(_pooled(model.get_text_features(**tokenize(tokenizer, texts, device))), dim=-1)


@dataclass
class ZeroShot:
    """Zero-shot result: ``probs[i, k]`` of image ``i`` being ``classes[k]``; ``predicted[i]`` the argmax class."""

    classes: list[str]
    probs: torch.Tensor
    predicted: list[str]

    def accuracy(self, labels: Sequence[str]) -> float:
        if len(labels) != len(self.predicted):
            raise ValueError(f"{len(labels)} labels for {len(self.predicted)} images")
        return sum(p == t for p, t in zip(self.predicted, labels)) / max(len(labels), 1)


@torch.no_grad()
def zero_shot(model: Any, tokenizer: Any, images: torch.Tensor, class_prompts: Mapping[str, str | Sequence[str]],
              *, preprocess: ClipPreprocess | None = None, batch_size: int = 256) -> ZeroShot:
    """Classify ``images`` (``[B, 3, H, W]`` in [0, 1]) among ``class_prompts`` by cosine similarity.

    A class may have several prompts; their unit embeddings are averaged and renormalised
    (CLIP's prompt ensembling). Probabilities use the model's learned temperature.
    """
    if not class_prompts:
        raise ValueError("zero_shot needs at least one class")
    prep = preprocess or ClipPreprocess(size=int(model.config.vision_config.image_size),
                                        crop=int(model.config.vision_config.image_size))
    classes = list(class_prompts)
    weights = []
    for c in classes:
        prompts = [class_prompts[c]] if isinstance(class_prompts[c], str) else list(class_prompts[c])
        weights.append(F.normalize(encode_texts(model, tokenizer, prompts).mean(0), dim=-1))
    text = torch.stack(weights)
    device = text.device
    img = torch.cat([encode_images(model, prep(images[i:i + batch_size].to(device)))
                     for i in range(0, len(images), batch_size)])
    probs = (model.logit_scale.exp() * img @ text.T).softmax(-1)
    return ZeroShot(classes=classes, probs=probs.cpu(), predicted=[classes[k] for k in probs.argmax(-1).tolist()])


def caption_groups(captions: Sequence[str]) -> torch.Tensor:
    """``[N]`` ids equal exactly where two captions are the same string."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(c, len(ids)) for c in captions])


def contrastive_loss(logits_per_image: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the image-text similarity matrix.

    With ``groups`` (from :func:`caption_groups`), pairs with the same caption string are all
    positives (target spread evenly over them) instead of negatives; without it, the diagonal
    alone is positive, as in CLIP. ``logits_per_image`` already carries the temperature.
    """
    n = logits_per_image.shape[0]
    if groups is None:
        target_i = target_t = torch.eye(n, device=logits_per_image.device)
    else:
        same = (groups[:, None] == groups[None, :]).to(logits_per_image)
        target_i = target_t = same / same.sum(1, keepdim=True)
    loss_i = -(target_i * logits_per_image.log_softmax(1)).sum(1).mean()
    loss_t = -(target_t * logits_per_image.T.log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


#: How each toy defect label is named in a zero-shot prompt (its noun phrase, without the adjectives of captions).
DEFECT_NAMES: dict[str, str] = {
    "scratch": "a scratch", "hole": "a hole", "crack": "a crack", "stain": "a stain", "contamination": "contamination",
    "thread_break": "a broken thread", "dent": "a dent", "missing": "a missing part", "extra": "an extra part",
    "misplaced": "a misplaced part", "swapped": "swapped parts",
}

#: CLIP-style templates; the tiny model saw them prefixed to its training captions.
TEMPLATES: tuple[str, ...] = ("a photo of {}", "a close-up photo of {}")


def _material(category: str) -> str:
    from anoplug.data.toy import CATEGORIES

    return str(CATEGORIES[category]["material"])


def toy_category_prompts(categories: Sequence[str] | None = None) -> dict[str, list[str]]:
    """``{category: ["a photo of woven fabric", ...]}`` — the material phrase in each template."""
    from anoplug.data.toy import CATEGORIES

    return {c: [t.format(_material(c)) for t in TEMPLATES] for c in (categories or list(CATEGORIES))}


def toy_defect_prompts(category: str) -> dict[str, list[str]]:
    """``{"good": [...], defect: [...]}`` for one category: "a normal <material>" or "<defect> <prep> <material>"."""
    from anoplug.data.toy import CATEGORIES
    from anoplug.data.toy_defects import preposition
    from anoplug.types import GOOD

    material = _material(category)
    noun = material[2:] if material.startswith("a ") else material
    out = {GOOD: [t.format(f"a normal {noun}") for t in TEMPLATES]}
    for d in CATEGORIES[category]["defects"]:
        prep = "in" if category == "tray" else preposition(d)
        out[d] = [t.format(f"{DEFECT_NAMES[d]} {prep} {material}") for t in TEMPLATES]
    return out
