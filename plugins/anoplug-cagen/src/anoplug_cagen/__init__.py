"""CAGEN: ControlNet mask-controlled anomalies with latent fusion."""
