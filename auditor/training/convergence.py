"""Did training converge? A plateau test on the test-accuracy curve (unconverged scores are marked in the UI)."""

from __future__ import annotations

from collections.abc import Sequence


def has_plateaued(test_acc: Sequence[float], window: int, tolerance: float) -> bool:
    """True when the best test accuracy of the last `window` epochs beats the best before them by at most
    `tolerance`; needs more than `window` epochs to say yes."""
    values = [float(v) for v in test_acc]
    if len(values) <= window:
        return False
    return max(values[-window:]) - max(values[:-window]) <= tolerance
