"""The pair kinds behind the `duplicate` and `leaked` flags, with no dependencies: the dashboard's queries read them
without importing the detectors (and with them faiss)."""

from __future__ import annotations

# Pair kinds by signal: file/pixel hashes, the embedding graph, the edit-robust copy matcher (copies.py).
DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate", "pixel_duplicate")
LEAK_KINDS = ("exact_leak", "leak", "pixel_leak")
