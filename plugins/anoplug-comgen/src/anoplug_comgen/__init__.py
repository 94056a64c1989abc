"""ComGEN: component-aware logical anomalies from learned component embeddings."""
