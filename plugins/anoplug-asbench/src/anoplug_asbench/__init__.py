"""anoplug-asbench: the ASBench protocol (hybrid generators, synthetic-ratio sweep, metric correlation)."""
