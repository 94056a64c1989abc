"""anoplug-metrics: evaluators that judge generated anomalies (mask precision, IC-LPIPS, KID, IS, downstream utility)."""
