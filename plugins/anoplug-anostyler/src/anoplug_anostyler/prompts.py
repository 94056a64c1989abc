"""Two-class text prompts: a normal-state and an anomaly-state sentence set per (category, defect).

AnoStyler turns "category + defect name" into two CLIP text embeddings: the mean of the
encoded normal sentences (T_n) and of the anomaly sentences (T_a), each L2-normalised; the
style U-Net is pushed along T_a − T_n. The sentences are 25 templates × state phrases
(the official ``src/two_class_prompt_template.py`` word lists, re-typed here as data).

Two versions, because paper and code disagree:

- ``"paper"`` (default): the anomaly states are the four generic ones (``damaged {c}``,
  ``{c} with flaw`` …) *and* the three defect-specific ones (``{c} with {d} defect`` …), so
  the defect name reaches CLIP. The paper says the prompts are built from category *and*
  defect; the released code has exactly these defect-specific states and a
  ``format(category, defect)`` call with a fallback for one-slot states, but iterates the
  generic list twice instead — the evident intent is generic + specific (25 × 7 = 175
  anomaly sentences against 25 × 7 = 175 normal ones). *Our assumption*: the paper's
  count (165 + 165, per a secondary summary) could not be checked against the PDF.
- ``"code"``: exactly what ``main.py`` computes — the generic list concatenated with itself
  (200 sentences, the defect name never used). Mean-pooling a list concatenated with
  itself gives the same mean, so this equals the 100 generic sentences.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["TEMPLATES", "NORMAL_STATES", "ABNORMAL_STATES", "DEFECT_STATES", "PromptSet", "normal_phrases",
           "anomaly_phrases"]

PromptSet = Literal["paper", "code"]

#: the 25 template sentences (official ``template_level_prompts``).
TEMPLATES: tuple[str, ...] = tuple(
    f"a {adj}photo of {art} {{}}{tail}"
    for adj, tail in (("", " for anomaly detection"), ("", " for visual inspection"))
    for art in ("a", "the")) + tuple(
    f"a {adj} photo of {art} {{}}"
    for adj in ("close-up", "cropped", "blurry", "dark", "bright", "low resolution")
    for art in ("a", "the")) + (
    "a photo of a small {}", "a photo of the small {}", "a photo of a large {}", "a photo of the large {}",
    "a dirty photo of a {}", "a dirty photo of the {}", "a bad photo of a {}",
    "a cropped close-up photo of a {}", "a cropped close-up photo of the {}")

#: 7 normal states (official ``state_level_normal_prompts``).
NORMAL_STATES: tuple[str, ...] = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw",
                                  "{} without defect", "{} without damage")
#: 4 generic anomaly states (official ``state_level_abnormal_prompts``).
ABNORMAL_STATES: tuple[str, ...] = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
#: 3 defect-specific states, category then defect (official ``state_level_abnormality_specific_prompts``, unused there).
DEFECT_STATES: tuple[str, ...] = ("{} with {} defect", "{} with {} flaw", "{} with {} damage")


def normal_phrases(category: str) -> list[str]:
    """25 × 7 = 175 normal sentences for ``category`` (the same in both versions)."""
    return [t.format(s.format(category)) for t in TEMPLATES for s in NORMAL_STATES]


def anomaly_phrases(category: str, defect: str = "", version: PromptSet = "paper") -> list[str]:
    """The anomaly sentences: 175 with the defect name (``"paper"``), or the code's 200 without it.

    With ``"paper"`` and no defect name, the defect-specific states are left out (nothing
    to put in them) and the set is the 100 generic sentences.
    """
    if version == "code":
        return [t.format(s.format(category)) for t in TEMPLATES for s in ABNORMAL_STATES + ABNORMAL_STATES]
    if version != "paper":
        raise ValueError(f"prompt set must be 'paper' or 'code', got {version!r}")
    states = [s.format(category) for s in ABNORMAL_STATES]
    if defect.strip():
        states += [s.format(category, defect.strip()) for s in DEFECT_STATES]
    return [t.format(s) for t in TEMPLATES for s in states]
