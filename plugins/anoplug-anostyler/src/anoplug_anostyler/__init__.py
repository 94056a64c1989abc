"""AnoStyler (So & Kang, AAAI 2026): zero-shot localized anomalies by per-image CLIP style transfer.

The generator is :class:`anoplug_anostyler.method.Anostyler` (registered as ``anostyler``);
its parts: :mod:`.shapes` (meta-shape priors), :mod:`.foreground` (object restriction),
:mod:`.prompts` (two-class prompt sets), :mod:`.stylenet` (the 615 k-parameter U-Net) and
:mod:`.losses` (directional / masked CLIP, VGG content, TV).
"""
