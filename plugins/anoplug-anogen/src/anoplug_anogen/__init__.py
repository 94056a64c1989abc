"""AnoGen: few-shot textual inversion + box-blended DDIM (weak box labels)."""
