"""Why a memaudit database could not be opened: locked by another process too long, or not a DuckDB file."""

from __future__ import annotations

CORRUPT_MARKERS = ("not a valid DuckDB database", "Could not read enough bytes", "Corrupt database file",
                    "database file is corrupt", "block checksum", "Checksum")
LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "database is locked", "lock on file")


class StoreBusy(RuntimeError):
    """The database stayed locked by another process for longer than the retry budget."""


class StoreCorrupt(RuntimeError):
    """The file is not a readable DuckDB database (corrupt, truncated or half-written, or another kind of file)."""
