"""Names of the pipeline's stages and of the experiment's arms, with no dependencies: the dashboard reads them
without importing the stages themselves (and with them torch, faiss and open_clip)."""

from __future__ import annotations

STAGES = ("ingest", "train", "scores", "memorization", "embeddings", "detectors", "loo")
DEFAULT_STAGES = ("ingest", "train", "scores", "memorization", "embeddings", "detectors")

# Arms named by a word; `flag:<kind>` and `ids:<file>` are the other forms.
BUCKETS = ("memorized", "leakage", "subpopulation", "memorized_remainder")
NAMED_ARMS = (*BUCKETS, "decisions")
DEFAULT_ARMS = BUCKETS


def parse_arms(text: str) -> tuple[str, ...]:
    """The comma-separated arms of `--arms`, checked: known names, `flag:<kind>`, `ids:<file>`; no repeats."""
    arms = tuple(a.strip() for a in text.split(",") if a.strip())
    if not arms:
        raise ValueError(f"no arms given; use some of: {', '.join(NAMED_ARMS)}, flag:<kind>, ids:<file>")
    for arm in arms:
        if arm not in NAMED_ARMS and not (arm.startswith(("flag:", "ids:")) and arm.split(":", 1)[1]):
            raise ValueError(f"unknown arm {arm!r}; use: {', '.join(NAMED_ARMS)}, flag:<kind> or ids:<file>")
    if len(set(arms)) != len(arms):
        raise ValueError("an arm is named twice in --arms")
    return arms
