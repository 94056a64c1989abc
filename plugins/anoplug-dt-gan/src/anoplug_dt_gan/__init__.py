"""DT-GAN (Wang, Hoppe, Monari, Huber — BMVC 2022) for anoplug: the method in :mod:`anoplug_dt_gan.dtgan`,
its networks in :mod:`anoplug_dt_gan.networks`."""
