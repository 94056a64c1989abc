"""Foreign Patch Interpolation (Tan et al., MOOD 2020 / MELBA 2022) for anoplug: ``fpi``.

The generator lives in :mod:`anoplug_fpi.fpi`; this package imports nothing heavy.
"""
