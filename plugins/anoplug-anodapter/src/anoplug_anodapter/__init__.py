"""Anodapter: one DreamBooth model and two T2I-Adapters generating aligned anomaly masks and images."""
