"""Anomagic: zero-shot cross-product defects from a masked reference image prompt, with contrastive mask refinement."""
