"""MemSeg's abnormal synthesis (Yang, Wu, Feng — EAAI 2023): Perlin ∩ foreground masks, texture or shuffled-structure fill."""
