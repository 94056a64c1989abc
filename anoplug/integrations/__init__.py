"""Adapters that put anoplug generators inside other frameworks' training pipelines.

Each submodule imports its framework only when imported itself, so ``import anoplug`` (and
``import anoplug.integrations``) never pulls in anomalib, Lightning or their dependencies:

- :mod:`anoplug.integrations.anomalib`: any anoplug generator (or ASBench hybrid) where
  anomalib's ``PerlinAnomalyGenerator`` goes (DRAEM, DSR, GLASS), and a torchvision-v2
  transform for an anomalib datamodule's ``train_augmentations``.
"""
