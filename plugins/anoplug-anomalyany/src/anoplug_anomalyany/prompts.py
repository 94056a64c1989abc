"""The three prompts of AnomalyAny and the anomaly token's position, derived from one user prompt.

The official notebook is given four things by hand: the anomaly prompt ("a photo of a hazelnut
with a crack on it"), the index of the anomaly word in the tokenised prompt (8), a normal prompt
("a photo of a hazelnut") and a detailed, LLM-written description. Here only the prompt is
required (``conditions.prompt``); the rest defaults from it by the rules below (*our
assumption*), and each can be set by a parameter. The token index is always computed with the
base model's own tokenizer: a different tokenizer splits words differently, so a hard-coded
index would excite the wrong token (spec §5 pitfalls).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DEFECT_WORDS", "PromptSet", "anomaly_word", "normal_prompt", "token_indices", "resolve"]

#: Nouns taken to name the anomaly when ``anomaly_word`` is not given: the defect words of the tiny
#: base's vocabulary and of the toy data (plural forms included).
DEFECT_WORDS: frozenset[str] = frozenset("""
scratch scratches crack cracks hole holes stain stains spot spots dent dents cut cuts contamination broken bent
rough fold glue thread print squeeze poke liquid oil faulty misplaced flip blob smudge tear chip bubble burn rust
damage defect anomaly missing particles
""".split())

_ARTICLES = {"a", "an", "the"}


@dataclass(frozen=True)
class PromptSet:
    """Everything one sample's guidance reads from text; JSON-friendly (it is the sample's record)."""

    prompt: str
    anomaly_word: str
    token_indices: tuple[int, ...]
    normal_prompt: str
    detailed_prompt: str

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["token_indices"] = list(self.token_indices)
        return d


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9'-]+", text.lower())


def anomaly_word(prompt: str) -> str:
    """The word to excite: the last known defect noun of the prompt, else the first word after its last "with".

    Raises ``ValueError`` (naming the parameter to set) when neither rule finds one.
    """
    words = _words(prompt)
    known = [w for w in words if w in DEFECT_WORDS]
    if known:
        return known[-1]
    if "with" in words:
        after = [w for w in words[len(words) - 1 - words[::-1].index("with") + 1:] if w not in _ARTICLES]
        if after:
            return after[0]
    raise ValueError(f"cannot tell the anomaly word of prompt {prompt!r}: set the anomaly_word parameter "
                     f"(e.g. anomaly_word=crack)")


def normal_prompt(prompt: str, word: str) -> str:
    """The normal prompt: the text before the last " with " (the notebook's pattern), else the prompt without the word."""
    low = prompt.strip()
    cut = low.lower().rfind(" with ")
    if cut > 0:
        return low[:cut].strip()
    kept = [w for w in low.split() if w.lower().strip(".,;:") != word]
    if kept and kept[-1].lower() in _ARTICLES:
        kept = kept[:-1]
    return " ".join(kept)


def token_indices(tokenizer: Any, prompt: str, word: str, max_length: int | None = None) -> tuple[int, ...]:
    """Positions of ``word``'s tokens in the tokenised ``prompt`` (BOS = position 0), its last occurrence.

    CLIP's BPE splits text into words before merging, so a word's tokens in the prompt are the
    tokens of the word alone; a word may take several tokens (all of them are excited, and the
    loss takes the worst one, as Attend-and-Excite does with several indices).
    """
    ids = list(tokenizer(prompt).input_ids)
    piece = list(tokenizer(word, add_special_tokens=False).input_ids)
    if not piece:
        raise ValueError(f"anomaly word {word!r} tokenises to nothing")
    starts = [s for s in range(len(ids) - len(piece) + 1) if ids[s:s + len(piece)] == piece]
    if not starts:
        raise ValueError(f"anomaly word {word!r} is not a word of prompt {prompt!r} (as the tokenizer splits it); "
                         "set anomaly_word to a word of the prompt")
    pos = tuple(range(starts[-1], starts[-1] + len(piece)))
    limit = max_length or int(getattr(tokenizer, "model_max_length", 77) or 77)
    if pos[-1] >= limit - 1:
        raise ValueError(f"anomaly word {word!r} falls beyond the text encoder's {limit} positions in {prompt!r}")
    return pos


def resolve(tokenizer: Any, prompts: Sequence[str], *, word: str = "", normal: str = "", detailed: str = "",
            max_length: int | None = None) -> list[PromptSet]:
    """One :class:`PromptSet` per prompt; empty ``word`` / ``normal`` / ``detailed`` follow the rules above.

    The detailed prompt defaults to the prompt itself (*our assumption*: offline there is no LLM
    to write one; the paper's are longer descriptions of the same defect).
    """
    out = []
    for p in prompts:
        w = (word or anomaly_word(p)).lower()
        out.append(PromptSet(prompt=p, anomaly_word=w, token_indices=token_indices(tokenizer, p, w, max_length),
                             normal_prompt=normal or normal_prompt(p, w), detailed_prompt=detailed or p))
    return out
