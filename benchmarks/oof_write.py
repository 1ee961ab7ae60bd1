"""Peak memory of the detectors stage's `oof_probs` write alone: random (n x classes) float32 probabilities saved
with `save_oof_probs` into a fresh database, in a fresh process, reporting the resident memory the write adds over
the arrays (peak RSS after minus peak RSS before) and its wall time.

Usage: python benchmarks/oof_write.py [--points 10000] [--classes 10000] [--chunk-cells N] [--one-insert]
`--chunk-cells` sets the floats per insert (default: auditor.detectors.detector_rows.OOF_CHUNK_CELLS); `--one-insert` writes
everything in one insert with no DuckDB memory limit, as the stage did before the write was bounded.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from auditor.detectors import detector_rows
from auditor.store.database import Store

SEED = 0


def _peak_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(points: int, classes: int, chunk_cells: int, one_insert: bool, workdir: Path) -> dict:
    """Save `points` x `classes` random probabilities with `save_oof_probs` in inserts of `chunk_cells` floats (or,
    `one_insert`, the earlier way) and return the peak RSS before and after, what it added, the time and the rows."""
    detector_rows.OOF_CHUNK_CELLS = chunk_cells
    store = Store(workdir / "oof.duckdb")
    store.init()
    probs = np.random.default_rng(SEED).random((points, classes), dtype=np.float32)
    ids = np.array([f"s{i:06d}" for i in range(points)])
    before = _peak_mib()
    t0 = time.perf_counter()
    if one_insert:  # the earlier write: one frame, DuckDB's default memory limit
        store.write([("oof_probs", pd.DataFrame({"sample_id": ids, "probs": list(probs), "source": "5-fold",
                                                 "run_id": "oof-bench"}))])
    else:
        detector_rows.save_oof_probs(store, "oof-bench", ids, probs, "5-fold")
    seconds = time.perf_counter() - t0
    after = _peak_mib()
    return {"points": points, "classes": classes, "write": "one insert" if one_insert else f"chunks of {chunk_cells}",
            "peak_before_mib": round(before), "peak_after_mib": round(after), "write_extra_mib": round(after - before),
            "seconds": round(seconds, 1), "rows": store.scalar("SELECT count(*) FROM oof_probs")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--chunk-cells", type=int, default=detector_rows.OOF_CHUNK_CELLS)
    parser.add_argument("--one-insert", action="store_true", help="the earlier write, for comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.points, args.classes, args.chunk_cells, args.one_insert, Path(tmp))
    print(" ".join(f"{key}={value}" for key, value in result.items()))


if __name__ == "__main__":
    main()
