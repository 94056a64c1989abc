"""DRAEM (Zavrtanik, Kristan, Skočaj — ICCV 2021): Perlin-noise masks filled with augmented texture."""
