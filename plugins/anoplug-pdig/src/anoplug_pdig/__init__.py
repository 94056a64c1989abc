"""PDIG: photovoltaic defects from semantic concept embeddings, a style adaptor and boundary-smoothing constraints."""
