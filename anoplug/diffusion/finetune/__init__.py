"""Fine-tuning a latent text-to-image model: one module per mode, all on one shared core.

Every mode trains through :class:`anoplug.train.Trainer` and takes the same noise-prediction
loss (:mod:`.common`); they differ in what trains and what conditions the UNet:

- **textual inversion** (:mod:`.textual_inversion`, mechanism in :mod:`.placeholders`):
  placeholder token rows, or per-sample injected vectors; safetensors, or diffusers' TI files
  (``pipe.load_textual_inversion``);
- **LoRA** (:mod:`.lora`; a *non-faithful*, memory-saving option): rank-r matrices on the UNet's
  and CLIP's attention via ``peft``; ``pytorch_lora_weights.safetensors``
  (``pipe.load_lora_weights``);
- **DreamBooth** (:mod:`.dreambooth`): the full UNet (+ text encoder) with prior preservation;
  a diffusers pipeline directory (``from_pretrained``);
- **ControlNet** (:mod:`.controlnet`), **T2I-Adapter** (:mod:`.t2i_adapter`) and an
  **IP-Adapter**-style image prompt (:mod:`.ip_adapter`): a small network beside the frozen
  model (shared data in :mod:`.conditioned`); ``ControlNetModel.from_pretrained``,
  ``T2IAdapter.from_pretrained``, ``pipe.load_ip_adapter``.

A new mode is a sibling module with the same shape: a ``*_loss`` step that calls
:func:`.common.noise_prediction_loss`, a ``train_*`` that runs it with :func:`.common.fit`, and
a ``save_*`` in the layout of diffusers' loader for it; add it to :data:`MODES`, to
``docs/finetune.md`` and a ``bench_*`` function to ``benchmarks/bench_finetune.py``.
Importing this package imports none of the modes (``peft`` is needed only by :mod:`.lora`).
"""

from __future__ import annotations

#: mode name -> its module (import it with ``importlib.import_module`` or ``from ... import``).
MODES: dict[str, str] = {
    "textual_inversion": "anoplug.diffusion.finetune.textual_inversion",
    "lora": "anoplug.diffusion.finetune.lora",
    "dreambooth": "anoplug.diffusion.finetune.dreambooth",
    "controlnet": "anoplug.diffusion.finetune.controlnet",
    "t2i_adapter": "anoplug.diffusion.finetune.t2i_adapter",
    "ip_adapter": "anoplug.diffusion.finetune.ip_adapter",
}

__all__ = ["MODES"]
