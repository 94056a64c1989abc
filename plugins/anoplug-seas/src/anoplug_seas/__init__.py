"""SeaS (ICCV 2025): separation and sharing fine-tuning with a refined mask head, for anoplug."""
