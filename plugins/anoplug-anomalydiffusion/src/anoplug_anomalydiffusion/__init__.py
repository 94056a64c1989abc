"""AnomalyDiffusion (Hu et al., AAAI 2024) as an anoplug plugin; the method is in ``anomalydiffusion.py``."""
