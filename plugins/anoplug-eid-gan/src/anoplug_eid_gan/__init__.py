"""EID-GAN for anoplug: a DCGAN whose generator loss carries an outlier-crop penalty (IEEE TII 2023)."""
