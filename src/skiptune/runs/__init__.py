"""Orchestration over the experiment layer: sweeps, rho search, standard vs S²-DM training comparisons."""
