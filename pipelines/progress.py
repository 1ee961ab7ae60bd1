"""Progress reporting for stages: a factory of bars, tqdm for the terminal, silent for tests and background jobs."""

from __future__ import annotations

import sys
from typing import Protocol

from tqdm import tqdm


class Bar(Protocol):
    def update(self, n: int = 1) -> object: ...
    def close(self) -> None: ...


class ProgressFactory(Protocol):
    def __call__(self, desc: str, total: int, unit: str = "it") -> Bar: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


def silent(desc: str, total: int, unit: str = "it") -> Bar:
    """A bar that reports nothing."""
    return _Silent()


def terminal(desc: str, total: int, unit: str = "it") -> Bar:
    """A tqdm bar on stderr, one per stage step."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)


def notice(progress: ProgressFactory, text: str) -> None:
    """Say `text` on the terminal where progress is shown (a plan before a long step); nothing when silent."""
    if progress is not silent:
        print(text, file=sys.stderr, flush=True)
