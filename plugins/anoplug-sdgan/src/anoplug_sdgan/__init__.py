"""SDGAN (Niu, Li, Wang, Lin, IEEE T-ASE 2020) as an anoplug plugin; the method is in ``sdgan.py``."""
