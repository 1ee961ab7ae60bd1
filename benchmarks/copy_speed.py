"""The copy matcher's cost before and after a change: on the default dataset's 4,000 / 1,000 split, the time to build
its index over the training images and to search the 1,000 test images (per 1,000 queries), with the current module
and with auditor/detectors/copies.py as it was at `--before` (read with `git show`), alternated `--repeats` times;
wall and CPU seconds (CPU: less sensitive to other jobs).

Usage: python benchmarks/copy_speed.py [--before 8d19134] [--repeats 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from copies import dataset
from report import table

from auditor.detectors import copies as matcher

ROOT = Path(__file__).resolve().parent.parent


def module_at(revision: str) -> ModuleType:
    """auditor/detectors/copies.py as it was at `revision`, imported under another name."""
    source = subprocess.run(["git", "show", f"{revision}:auditor/detectors/copies.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "copies_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("copies_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="8d19134", help="git revision of the matcher to compare with")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    train, test = dataset("default")
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


if __name__ == "__main__":
    main()
