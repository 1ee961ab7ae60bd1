"""The copy matcher's framing before and after it was vectorised: every `frames` call the detectors stage's copy
matcher makes on the default dataset's 4,000 / 1,000 split (the base frames, each query view of train, test and the
calibration's 1,000 edited and unedited samples), timed with the current module and with the module as it was at
`--before` (read with `git show`), alternated `--repeats` times; wall and CPU seconds (CPU: less sensitive to other
jobs), and the largest difference between the two outputs.

Usage: python benchmarks/copy_speed.py [--before af4ddd7^] [--repeats 2]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from copies import dataset
from report import table

from auditor.detectors import copies as matcher
from auditor.detectors.edits import CALIBRATION_EDITS, edit_images

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


def stage_frames(module: ModuleType, train: np.ndarray, test: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Every framing of the copy matcher's run over train and test (CopyIndex, searches, calibrate_copies)."""
    rows = np.sort(np.random.default_rng(seed).choice(len(train), 1000, replace=False))
    edited = edit_images(train[rows], [CALIBRATION_EDITS[i % len(CALIBRATION_EDITS)] for i in range(len(rows))], seed)
    views = tuple(range(len(module.VIEWS)))
    out = [module.frames(train, blur=blur, stretched=stretched) for blur, stretched in module.BASES]
    for query in (train, test, edited, train[rows]):
        out += [module.frames(query, views, stretched=stretched) for stretched in (False, True)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="af4ddd7^", help="git revision of the loop version")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    train, test = dataset("default")
    before = module_at(args.before)
    rows, outputs = [], {}
    for repeat in range(args.repeats):
        for name, module in ((f"before ({args.before})", before), ("now", matcher)):
            wall, cpu = time.perf_counter(), time.process_time()
            outputs[name] = stage_frames(module, train, test)
            rows.append([str(repeat + 1), name, f"{time.perf_counter() - wall:.1f}",
                         f"{time.process_time() - cpu:.1f}"])
    old, new = outputs.values()
    diff = max(float(np.abs(a - b).max()) for a, b in zip(old, new))
    table(f"Copy matcher framing, {len(train):,} train / {len(test):,} test images; max |difference| {diff:.2g}",
          ["repeat", "module", "wall s", "CPU s"], rows)


if __name__ == "__main__":
    main()
