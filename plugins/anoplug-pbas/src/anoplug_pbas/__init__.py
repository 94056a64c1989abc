"""PBAS (Chen, Luo, Gao, Lv, Zhang — IEEE TCSVT 2025): anomalies synthesised by pushing features past a boundary.

The method lives in :mod:`anoplug_pbas.pbas`; the way to *see* what it does (discriminator maps
and a PCA of normal vs synthetic features and the centres) in :mod:`anoplug_pbas.visualize`.
"""
