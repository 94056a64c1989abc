"""CutPaste (Li et al., CVPR 2021) for anoplug: ``cutpaste``, ``cutpaste-scar`` and ``cutpaste-3way``.

The generators live in :mod:`anoplug_cutpaste.cutpaste`; this package imports nothing heavy.
"""
