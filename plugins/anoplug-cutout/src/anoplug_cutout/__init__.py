"""CutOut (DeVries & Taylor, 2017) as ASBench uses it for anomaly synthesis: ``cutout``.

The generator lives in :mod:`anoplug_cutout.cutout`; this package imports nothing heavy.
"""
