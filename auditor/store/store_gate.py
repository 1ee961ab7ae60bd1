"""One gate per database file and process: turns between its read-only and read-write DuckDB connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


class Gate:
    """Turns between the read-only and the read-write connections to one file within this process.

    DuckDB refuses to open a file read-only while this process has it open read-write, and the reverse ('different
    configuration than existing connections'): the dashboard's sessions, one thread each, would fail each other's
    reads and decisions. Any number of connections of one mode may be open together; a connection of the other mode
    waits until they are closed. A waiting writer holds back new readers, so a stream of page renders cannot starve a
    decision; a thread that already holds a connection never waits (its own nested connection cannot wait for itself).
    A thread's shared read-only connections (`share`) are closed when that thread opens a read-write one, whichever
    Store holds them: a job launched from a page render writes through a Store of its own.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held: dict[bool, dict[int, int]] = {True: {}, False: {}}  # read_only -> thread id -> connections
        self._writers_waiting = 0
        self._closers: dict[int, list[Callable[[], None]]] = {}  # thread id -> closers of its shared readers

    def enter(self, read_only: bool, deadline: float) -> bool:
        """Take a turn for one connection of this mode (True), or False when `deadline` passed first."""
        me = threading.get_ident()
        with self._changed:
            if not read_only:
                for close in list(self._closers.get(me, ())):
                    close()
            if me not in self._held[True] and me not in self._held[False]:
                other = self._held[not read_only]
                self._writers_waiting += not read_only
                try:
                    ready = self._changed.wait_for(lambda: not other and (not read_only or not self._writers_waiting),
                                                   timeout=max(deadline - time.monotonic(), 0))
                finally:
                    self._writers_waiting -= not read_only
                    self._changed.notify_all()
                if not ready:
                    return False
            held = self._held[read_only]
            held[me] = held.get(me, 0) + 1
            return True

    def leave(self, read_only: bool) -> None:
        """End the turn of one connection of this mode taken by this thread."""
        me = threading.get_ident()
        with self._changed:
            held = self._held[read_only]
            held[me] -= 1
            if not held[me]:
                del held[me]
            self._changed.notify_all()


    def share(self, close: Callable[[], None]) -> None:
        """Register `close` for a read-only connection this thread keeps open between calls; it runs (and must call
        `unshare` and `leave`) when this thread next opens a read-write connection."""
        with self._changed:
            self._closers.setdefault(threading.get_ident(), []).append(close)

    def unshare(self, close: Callable[[], None]) -> None:
        """Forget a closer registered by `share` from this thread (its connection is being closed)."""
        me = threading.get_ident()
        with self._changed:
            closers = self._closers.get(me, [])
            if close in closers:
                closers.remove(close)
            if not closers:
                self._closers.pop(me, None)


_GATES: dict[str, Gate] = {}
_GATES_LOCK = threading.Lock()


def gate_for(path: Path) -> Gate:
    """The one gate of this process for the file at `path`."""
    key = str(path.resolve())
    with _GATES_LOCK:
        return _GATES.setdefault(key, Gate())
