"""Tiny diffusion components for tests and CPU runs, and the committed offline base model.

Every part is a real diffusers/transformers class, only small, so the code paths are the
ones a real checkpoint takes. The tokenizer is written locally (hub tiny tokenizers are not
reachable offline): a CLIP byte-level BPE whose merges spell out a small word list, so
common caption words are one token each and any other text still tokenizes by bytes.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["WORDS", "write_clip_tokenizer", "write_bert_tokenizer", "tiny_tokenizer", "tiny_text_encoder", "tiny_vae",
           "tiny_unet", "tiny_pixel_unet", "tiny_sd_pipeline", "tiny_ldm_pipeline", "TINY_BASE_DIR", "load_tiny_base",
           "seeded"]

#: Words that get their own token: prompt templates, industrial objects and defect names.
WORDS: tuple[str, ...] = tuple("""
a an the of photo picture image rendering cropped close-up bright dark clean dirty good bad small large nice weird cool
normal defective damaged anomaly anomalous defect surface texture object part industrial inspection with on in and
screw bottle carpet wood metal tile leather grid cable capsule hazelnut nut pill toothbrush transistor zipper fabric
plate gear disc panel pcb glass tablet bolt washer button foil sheet pattern stripes weave grain
scratch scratches crack cracks hole holes stain spot spots dent cut contamination color colour missing broken bent
rough fold glue thread print squeeze poke liquid oil faulty misplaced flip blob smudge tear chip bubble burn rust
""".split())

SPECIALS = ("<|startoftext|>", "<|endoftext|>")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build tiny modules with reproducible random weights without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes (GPT-2 convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(extra))]
    return [chr(c) for c in codes]


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair merging as CLIP's tokenizer does it: always merge the lowest-ranked adjacent pair."""
    pieces = list(pieces)
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:])) if (a, b) in ranks]
        if not pairs:
            break
        best = min(pairs)[0]
        out, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and ranks.get((pieces[i], pieces[i + 1])) == best:
                out.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                out.append(pieces[i])
                i += 1
        pieces = out
    return pieces


def write_clip_tokenizer(directory: str | Path, words: Iterable[str] = WORDS) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` of a CLIP tokenizer that needs no download.

    Merges are added word by word (simulating the BPE) until every listed word is a single
    token; everything else falls back to smaller pieces and bytes.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    ranks: dict[tuple[str, str], int] = {}
    for w in dict.fromkeys(x.lower() for x in words if x):
        pieces = _bpe([*w[:-1], w[-1] + "</w>"], ranks)
        while len(pieces) > 1:  # join the first two pieces until the word is one token
            ranks[(pieces[0], pieces[1])] = len(ranks)
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = _bpe(pieces, ranks)
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    for s in SPECIALS:
        vocab[s] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    return d


def write_bert_tokenizer(directory: str | Path, words: Iterable[str] = WORDS) -> Path:
    """Write a ``vocab.txt`` for a BERT word-piece tokenizer (LDM-BERT family) without a download."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars if c.isalnum()],
            *dict.fromkeys(w.lower() for w in words)]
    (d / "vocab.txt").write_text("\n".join(dict.fromkeys(toks)) + "\n")
    return d


def tiny_tokenizer(words: Iterable[str] = WORDS, kind: str = "clip", max_length: int = 77) -> Any:
    """A tokenizer built from locally written files (never touches the network)."""
    from transformers import BertTokenizer, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        if kind == "clip":
            return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, words), local_files_only=True,
                                                 model_max_length=max_length)
        if kind == "bert":
            return BertTokenizer.from_pretrained(write_bert_tokenizer(tmp, words), local_files_only=True,
                                                 model_max_length=max_length)
    raise ValueError(f"unknown tokenizer kind {kind!r}; use 'clip' or 'bert'")


def tiny_text_encoder(tokenizer: Any, *, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0) -> Any:
    """A small CLIP text transformer sized to ``tokenizer`` (as many positions as its ``model_max_length``)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         max_position_embeddings=int(tokenizer.model_max_length),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with seeded(seed):
        return CLIPTextModel(cfg).eval()


def tiny_vae(*, block_out_channels: tuple[int, ...] = (32, 64), latent_channels: int = 4, norm_num_groups: int = 32,
             seed: int = 0) -> Any:
    """AutoencoderKL with ``2**(len(block_out_channels)-1)`` down-sampling."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    with seeded(seed):
        return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=block_out_channels,
                             down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                             latent_channels=latent_channels, layers_per_block=1,
                             norm_num_groups=norm_num_groups, sample_size=64).eval()


def tiny_unet(*, sample_size: int = 16, in_channels: int = 4, out_channels: int = 4, cross_attention_dim: int = 32,
              block_out_channels: tuple[int, ...] = (32, 64), attention_head_dim: int = 8, first_attn_level: int = 0,
              seed: int = 0) -> Any:
    """UNet2DConditionModel with cross-attention from level ``first_attn_level`` down (default: every level + mid)."""
    from diffusers import UNet2DConditionModel

    n = len(block_out_channels)
    down = tuple("DownBlock2D" if i < first_attn_level else "CrossAttnDownBlock2D" for i in range(n))
    with seeded(seed):
        return UNet2DConditionModel(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                                    block_out_channels=block_out_channels, layers_per_block=1,
                                    down_block_types=down, up_block_types=down_to_up(down),
                                    cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
                                    norm_num_groups=32).eval()


def down_to_up(down: tuple[str, ...]) -> tuple[str, ...]:
    return tuple("CrossAttnUpBlock2D" if b.startswith("CrossAttn") else "UpBlock2D" for b in reversed(down))


def tiny_pixel_unet(*, sample_size: int = 32, in_channels: int = 3, out_channels: int = 3,
                    block_out_channels: tuple[int, ...] = (32, 64), seed: int = 0) -> Any:
    """UNet2DModel for pixel-space DDPMs (self-attention at the lowest resolution)."""
    from diffusers import UNet2DModel

    n = len(block_out_channels)
    down = ("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1)
    with seeded(seed):
        return UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                           block_out_channels=block_out_channels, layers_per_block=1, down_block_types=down,
                           up_block_types=up, norm_num_groups=8).eval()


def tiny_sd_pipeline(*, image_size: int = 32, seed: int = 0, words: Iterable[str] = WORDS) -> Any:
    """A StableDiffusionPipeline of tiny random parts (×2 VAE: 32 px → 16×16×4 latents)."""
    from diffusers import StableDiffusionPipeline

    from anoplug.diffusion.base import make_scheduler

    tok = tiny_tokenizer(words)
    return StableDiffusionPipeline(vae=tiny_vae(seed=seed), text_encoder=tiny_text_encoder(tok, seed=seed),
                                   tokenizer=tok, unet=tiny_unet(sample_size=image_size // 2, seed=seed),
                                   scheduler=make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def tiny_ldm_pipeline(*, image_size: int = 32, seed: int = 0, words: Iterable[str] = WORDS) -> Any:
    """An LDMTextToImagePipeline (LDM-BERT + BERT tokenizer) of tiny random parts — the LDM family's layout."""
    from diffusers import LDMTextToImagePipeline
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    from anoplug.diffusion.base import make_scheduler

    tok = tiny_tokenizer(words, kind="bert")
    cfg = LDMBertConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, encoder_attention_heads=2, head_dim=16,
                        encoder_ffn_dim=37, max_position_embeddings=77, pad_token_id=tok.pad_token_id)
    with seeded(seed):
        bert = LDMBertModel(cfg).eval()
    return LDMTextToImagePipeline(vqvae=tiny_vae(seed=seed), bert=bert, tokenizer=tok,
                                  unet=tiny_unet(sample_size=image_size // 2, seed=seed), scheduler=make_scheduler("ddim"))


#: Where the committed offline base model lives (trained by ``tools/train_tiny_base.py``).
TINY_BASE_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_base"


def load_tiny_base(directory: str | Path | None = None, device: str | torch.device = "cpu") -> Any:
    """The offline stand-in for SD/LDM: 64 px, trained on the embedded toy dataset (see docs/tiny_base_model.md)."""
    from diffusers import StableDiffusionPipeline

    from anoplug.diffusion.base import WeightsNotFoundError, check_tokenizer, make_scheduler

    d = Path(directory) if directory is not None else TINY_BASE_DIR
    if not (d / "model_index.json").is_file():
        raise WeightsNotFoundError(f"the tiny base model is missing from {d}; restore it from git, or rebuild it "
                                   "with the two tools/train_tiny_base.py commands in docs/tiny_base_model.md")
    pipe = StableDiffusionPipeline.from_pretrained(str(d), local_files_only=True, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    check_tokenizer(pipe.tokenizer, f"tokenizer in {d}")
    pipe.scheduler = make_scheduler("ddim")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
