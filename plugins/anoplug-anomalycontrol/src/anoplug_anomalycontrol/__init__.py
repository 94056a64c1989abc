"""AnomalyControl (He et al., arXiv 2412.06510) for anoplug: Q-Former semantics of a reference, ASEA, SGA, inpainting."""
