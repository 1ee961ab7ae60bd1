"""The copy matcher's cost before and after a change: on the default dataset's 4,000 / 1,000 split, the time to build
its index over the training images and to search the 1,000 test images (per 1,000 queries), with the current module
and with auditor/detectors/copies.py (and its copies_verify.py) as it was at `--before` (read with `git show`),
alternated `--repeats` times; wall and CPU seconds (CPU: less sensitive to other jobs).

With --verify-pairs N, it times copies_verify.verify alone instead, before and now: N pairs of prepared training
images, each of N / 10 queries against 10 random training images (as copies.py hands them over, a query's pairs
together).

Usage: python benchmarks/copy_speed.py [--before 8d19134] [--repeats 2] [--verify-pairs 20000]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from copies import dataset
from report import table

from auditor.detectors import copies as matcher

ROOT = Path(__file__).resolve().parent.parent


def module_at(revision: str) -> ModuleType:
    """auditor/detectors/copies.py as it was at `revision`, imported under another name, with the copies_verify.py
    of that revision where it had one."""
    module = _imported(revision, "copies")
    if hasattr(module, "copies_verify"):
        module.copies_verify = _imported(revision, "copies_verify")
    return module


def _imported(revision: str, name: str) -> ModuleType:
    """auditor/detectors/<name>.py at `revision`, imported as <name>_before."""
    source = subprocess.run(["git", "show", f"{revision}:auditor/detectors/{name}.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"{name}_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="8d19134", help="git revision of the matcher to compare with")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--verify-pairs", type=int, default=0, help="time copies_verify.verify alone on this many")
    args = parser.parse_args()
    train, test = dataset("default")
    if args.verify_pairs:
        verify_cost(train, args.before, args.repeats, args.verify_pairs)
        return
    rows = []
    for repeat in range(args.repeats):
        for name, module in ((f"before ({args.before})", module_at(args.before)), ("now", matcher)):
            wall, cpu = time.perf_counter(), time.process_time()
            index = module.CopyIndex(train, 10, exact_below=10 ** 9)
            built_wall, built_cpu = time.perf_counter() - wall, time.process_time() - cpu
            wall, cpu = time.perf_counter(), time.process_time()
            index.search(test, 10)
            scale = 1000 / len(test)
            rows.append([str(repeat + 1), name, f"{built_wall:.1f} / {built_cpu:.1f}",
                         f"{(time.perf_counter() - wall) * scale:.1f} / {(time.process_time() - cpu) * scale:.1f}"])
    table(f"Copy matcher cost, index over {len(train):,} training images, {len(test):,} test queries",
          ["repeat", "module", "index build: wall / CPU s", "per 1,000 queries: wall / CPU s"], rows)


def verify_cost(train: np.ndarray, before: str, repeats: int, pairs: int) -> None:
    """Prints the CPU and wall seconds of copies_verify.verify on `pairs` seeded pairs, before and now."""
    rng = np.random.default_rng(0)
    query_rows = np.repeat(np.arange(pairs // 10 + 1), 10)[:pairs]
    candidate_rows = rng.integers(0, len(train), pairs)
    rows, results = [], {}
    for repeat in range(repeats):
        for name, module in ((f"before ({before})", module_at(before).copies_verify), ("now", matcher.copies_verify)):
            prepared = module.prepare(train)
            wall, cpu = time.perf_counter(), time.process_time()
            if "query_rows" in inspect.signature(module.verify).parameters:
                results[name] = module.verify(prepared, prepared, query_rows, candidate_rows)
            else:
                results[name] = module.verify(prepared[query_rows], prepared[candidate_rows])
            rows.append([str(repeat + 1), name, f"{time.perf_counter() - wall:.1f}",
                         f"{time.process_time() - cpu:.1f}"])
    (old_score, old_match), (score, match) = results.values()
    equal = float((old_match == match).float().mean())
    table(f"copies_verify.verify alone, {pairs:,} pairs (max score difference "
          f"{float((old_score - score).abs().max()):.1e}, matches equal {equal:.4f})",
          ["repeat", "module", "wall s", "CPU s"], rows)


if __name__ == "__main__":
    main()
