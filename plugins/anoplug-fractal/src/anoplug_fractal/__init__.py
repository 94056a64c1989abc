"""FractalAD's fractal anomaly generation (Xia et al., 2023), as ASBench uses it: IFS-fractal-masked self-patches."""
