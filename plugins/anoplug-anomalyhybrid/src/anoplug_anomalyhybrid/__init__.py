"""AnomalyHybrid (Ying Zhao, CVPR 2025 SyntaGen workshop) for anoplug.

The method is in :mod:`anoplug_anomalyhybrid.anomalyhybrid`.
"""
