"""The report layer: figures, markdown and CSV drawn from results (nothing here computes a result)."""
