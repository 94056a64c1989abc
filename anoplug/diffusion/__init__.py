"""Shared diffusion building blocks (the ``diffusion`` extra: diffusers, transformers).

Importing :mod:`anoplug` never imports this package; diffusion plugins import it when
they are used. It holds what the diffusion methods share, built once:

- :mod:`.base`     — the LDM/SD noise schedule, the scheduler factory and the weight and
  tokenizer checks (the bottom layer: imports nothing else from the package);
- :mod:`.loading`  — real checkpoints through ``from_pretrained`` (offline-friendly) with
  the right scheduler settings per family (LDM, SD), and :class:`.loading.Parts`, the
  encode/decode/text helpers every method needs;
- :mod:`.tiny`     — tiny components and a locally written tokenizer for tests, assembled
  into real diffusers pipelines; :func:`.tiny.load_tiny_base` loads the committed
  offline base model;
- :mod:`.sampling` — the one denoising loop with per-step hooks: the blended-sampling variants,
  classifier-free guidance, attention capture / re-weighting, test-time latent optimisation;
- :mod:`.blend`    — small helpers the samplers share (per-sample noise, step fractions, x̂0);
- :mod:`.attention` — cross-attention processors: capture maps, re-weight logits;
- :mod:`.finetune` — the fine-tune modes on :class:`anoplug.train.Trainer`: textual inversion
  (fixed and per-sample injected vectors), LoRA (peft), DreamBooth with prior preservation,
  ControlNet, T2I-Adapter, IP-Adapter;
- :mod:`.inversion` — the old import path of textual inversion (re-exports :mod:`.finetune`).
"""

from __future__ import annotations

import importlib.util

_missing = [m for m in ("diffusers", "transformers") if importlib.util.find_spec(m) is None]
if _missing:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"anoplug.diffusion needs {', '.join(_missing)}: pip install 'anoplug[diffusion]'")
