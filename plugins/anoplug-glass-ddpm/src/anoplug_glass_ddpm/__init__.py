"""Glass-defect DDPM (Boroujeni, Abedi, Bush 2025): an unconditional pixel DDPM trained only on defects.

:mod:`anoplug_glass_ddpm.glass_ddpm` is the generator, :mod:`~anoplug_glass_ddpm.memorisation`
the nearest-neighbour check against the training defects, :mod:`~anoplug_glass_ddpm.rebalance`
the paper's use (a good/defective classifier with and without the generated defects) and
:mod:`~anoplug_glass_ddpm.derived_mask` the optional mask against the nearest normal (an extension).
Importing this package imports no torch.
"""
