"""Bounding-box-guided diffusion (Simoni & Pelosin, CVPRW 2025) as an anoplug plugin; the method is in ``bboxdiffusion.py``."""
