"""The embedded default: the shipped demo model, its domain feature network, and their recipes."""
