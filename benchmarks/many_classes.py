"""Many classes, one image each: `memaudit run --profile quick` on C classes x 1 training image (and one test image
for every tenth class), timed, with the run's peak resident memory and whether it warned about classes smaller than k.

Usage: python benchmarks/many_classes.py [--classes 10000] [--stages ingest,train,scores,memorization,...]
                                        [--config FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 0


def write_dataset(root: Path, classes: int, seed: int = SEED) -> Path:
    """An ImageFolder tree: one random 28x28 grayscale image per class in train/, one per tenth class in test/."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for split in ("train", "test") if c % 10 == 0 else ("train",):
            path = root / split / f"c{c:05d}" / "0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return root


def run(classes: int, stages: str | None, workdir: Path, config: Path | None = None) -> dict:
    """Time one `memaudit run --profile quick` (with `config` over it) on the dataset and read its peak RSS (the only
    child of this call)."""
    data = write_dataset(workdir / "data", classes)
    argv = [sys.executable, "-m", "pipelines.cli", "run", "--data", str(data), "--db", str(workdir / "audit.duckdb"),
            "--profile", "quick", *(["--stages", stages] if stages else []),
            *(["--config", str(config.resolve())] if config else [])]
    t0 = time.perf_counter()
    # The run's output goes to files as it comes, so a run stopped from outside still shows how far it got.
    with open(workdir / "stdout.txt", "w") as out, open(workdir / "stderr.txt", "w") as err:
        code = subprocess.run(argv, stdout=out, stderr=err, env=dict(os.environ, HF_HUB_OFFLINE="1")).returncode
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stdout, stderr = ((workdir / name).read_text().splitlines() for name in ("stdout.txt", "stderr.txt"))
    warned = [line for line in stderr if line.startswith("warning:")]
    return {"classes": classes, "returncode": code, "seconds": round(seconds, 1), "peak_rss_mib": round(peak_mib),
            "warnings": warned, "tail": stdout[-16:] if code == 0 else stderr[-5:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--stages", default=None, help="comma-separated stages (default: all of the quick profile)")
    parser.add_argument("--config", type=Path, default=None, help="a TOML file over the quick profile")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this new folder and keep it (data, database, the run's stdout.txt and stderr.txt)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True)
        result = run(args.classes, args.stages, args.keep, args.config)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.classes, args.stages, Path(tmp), args.config)
    for key, value in result.items():
        print(f"{key}: {value}" if key != "tail" else "\n".join(["run output:", *value]))


if __name__ == "__main__":
    main()
