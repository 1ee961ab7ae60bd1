"""The Python entry point for notebooks: open an audit database and read its flags, scores, pairs, neighbours,
decisions and memorization estimate as pandas DataFrames, through the same reads the dashboard and CLI use."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from auditor.memorization import memorization_queries
from auditor.review import queries
from auditor.detectors.flag_kinds import FLAG_PRIORITY
from auditor.store.database import Store

__all__ = ["Audit", "open_audit"]


class Audit:
    """One audit database, opened read-only: every method runs short parameterised queries, so a pipeline may write
    the file between two calls."""

    def __init__(self, path: str | Path) -> None:
        self.store = Store(path)
        if not self.store.path.is_file():
            raise FileNotFoundError(f"audit database {self.store.path} does not exist; create it with "
                                    f"`memaudit run --data DATA --db {self.store.path}`")
        if "samples" not in self.store.tables():
            raise ValueError(f"{self.store.path} is not an audit database (it has no `samples` table); "
                             f"create one with `memaudit run --data DATA --db {self.store.path}`")

    def samples(self, split: str | None = None) -> pd.DataFrame:
        """Every usable image (sample_id, split, label, path, ...), or those of one split."""
        return self.store.query("SELECT * FROM samples WHERE ? IS NULL OR split = ? ORDER BY sample_id",
                                [split, split])

    def flags(self, kind: str | None = None) -> pd.DataFrame:
        """Flags (sample_id, kind, score, detail as JSON text, run_id, split, label), most important kind first, or
        those of one kind (see `auditor.detectors.flag_kinds.FLAG_PRIORITY` for the kinds)."""
        if kind is not None and kind not in FLAG_PRIORITY:
            raise ValueError(f"unknown flag kind {kind!r}; use one of {', '.join(FLAG_PRIORITY)}")
        return self.store.query(
            "SELECT f.sample_id, f.kind, f.score, f.detail, f.run_id, s.split, s.label "
            "FROM flags f LEFT JOIN samples s USING (sample_id) WHERE ? IS NULL OR f.kind = ? "
            "ORDER BY list_position(?, f.kind), f.score DESC NULLS LAST, f.sample_id",
            [kind, kind, list(FLAG_PRIORITY)])

    def scores(self) -> pd.DataFrame:
        """One row per training image: ApB and the other dynamics scores, mem with its 95 % interval and state, and
        the image's label (the `scores` table of docs/schema.md)."""
        return self.store.query("SELECT sc.*, s.label FROM scores sc JOIN samples s USING (sample_id) "
                                "ORDER BY sc.sample_id")

    def pairs(self, kind: str | None = None) -> pd.DataFrame:
        """Duplicate and leak pairs (a_id is the training side), most similar first, or those of one pair kind."""
        return self.store.query("SELECT * FROM pairs WHERE ? IS NULL OR kind = ? "
                                "ORDER BY kind, similarity DESC, a_id, b_id", [kind, kind])

    def neighbors(self, sample_id: str, limit: int = 10) -> pd.DataFrame:
        """The nearest training images of one sample in the detectors' embedding, closest first."""
        return queries.sample_neighbors(self.store, sample_id, limit)

    def decisions(self) -> pd.DataFrame:
        """The review decision that counts for each reviewed image (keep, remove or relabel), newest first."""
        return self.store.query("SELECT * FROM current_reviews ORDER BY decided_at DESC, sample_id")

    def estimate(self) -> dict | None:
        """The estimated number of memorized training images with its interval and the recall of the flags
        (`memorization_estimates`); None before a memorization run."""
        return memorization_queries.estimate(self.store)

    def calibration(self) -> pd.DataFrame:
        """How well each cheap proxy (ApB, EL2N, ...) tracks mem on this dataset, strongest first."""
        return memorization_queries.calibration(self.store)


def open_audit(path: str | Path) -> Audit:
    """Open the audit database at `path` for reading (see docs/api.md)."""
    return Audit(path)
