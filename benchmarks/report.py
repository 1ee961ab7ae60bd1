"""Printed tables shared by every benchmark (no project imports, so GPU hosts without duckdb can use it)."""

from __future__ import annotations


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Print `rows` under `header` as a left-aligned plain-text table headed by `title`."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
