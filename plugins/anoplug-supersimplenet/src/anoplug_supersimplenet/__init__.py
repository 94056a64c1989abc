"""SuperSimpleNet (Rolih, Fučka, Skočaj — ICPR 2024): anomalies synthesised in feature space.

The generator lives in :mod:`anoplug_supersimplenet.supersimplenet`; the way to *see* what it
does (anomaly maps and a PCA of features before/after) in :mod:`anoplug_supersimplenet.visualize`.
"""
