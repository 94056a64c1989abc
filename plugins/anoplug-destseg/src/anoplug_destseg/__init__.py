"""DeSTSeg (Zhang, Li, Li, Huang, Shan, Chen — CVPR 2023): its Perlin + texture anomaly synthesis, ``destseg-perlin``.

The generator lives in :mod:`anoplug_destseg.destseg`; this package imports nothing heavy.
"""
