"""Defect-GAN (Zhang, Cui, Hung, Lu — WACV 2021) for anoplug; the method is in :mod:`anoplug_defect_gan.defect_gan`."""
