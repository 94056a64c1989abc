"""Natural Synthetic Anomalies (Schlüter et al., ECCV 2022) for anoplug: generator ``nsa``.

The generator lives in :mod:`anoplug_nsa.nsa`, the Poisson solver in :mod:`anoplug_nsa.poisson`;
this package imports nothing heavy.
"""
