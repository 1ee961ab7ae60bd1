"""Marginal utility (marginal_utility: arms, buckets, statistics) and natural-memorization sweeps (sweep), with their
tables (docs/layout.md)."""
