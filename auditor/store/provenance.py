"""What produced a result: code version and library versions, stored with every run."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import auditor

_LIBRARIES = ("torch", "torchvision", "numpy", "pandas", "pillow", "duckdb", "faiss-cpu", "faiss-gpu",
              "open_clip_torch", "streamlit")


def code_version() -> str:
    """The git commit of the source tree (with '-dirty' for local edits), else the package version."""
    root = Path(auditor.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{auditor.__version__}+g{commit[:12]}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return auditor.__version__


def library_versions() -> dict[str, str]:
    """Versions of Python, the platform and every library that can change a score."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "memaudit": auditor.__version__}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-serialisable parts (configs, data hashes): identifies a unit of work."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
