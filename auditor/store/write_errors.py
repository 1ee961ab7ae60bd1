"""A full disk or a read-only location told apart from other failures, as one line naming the path, the cause and the
fix: DuckDB, torch and the OS each word these differently (or hide them behind a later error)."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
# How DuckDB and torch word a full disk: torch.save's zip writer reports only the short write ('unexpected pos').
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "unexpected pos")
_READ_ONLY_TEXT = ("Read-only file system", "Permission denied")


class StoreUnwritable(ValueError):
    """A write to the audit database failed because the disk is full or the file or its folder is read-only. A
    ValueError (like WriterBusy), so the dashboard's decision and launch forms report it as their other refusals."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, innermost last."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def free_space(path: Path) -> str:
    """Free space on the file system holding `path` (or its nearest existing folder), e.g. '1.2 MiB free'."""
    folder = path.resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def explain_write_failure(exc: BaseException, path: str | Path) -> str | None:
    """One line for a failure to write `path` (or the file `exc` names) because the disk is full or the location is
    read-only; None when `exc` is neither."""
    for link in _chain(exc):
        code = link.errno if isinstance(link, OSError) else None
        named = link.filename if isinstance(link, OSError) and link.filename else None
        where = Path(named or path)
        if code in _FULL_ERRNOS or any(marker in str(link) for marker in _FULL_TEXT):
            return (f"no space left on the device holding {where} ({free_space(where)}): free some space there, or "
                    "move the audit database to a larger disk, and try again (finished work is kept)")
        if (code in _READ_ONLY_ERRNOS and named) or any(marker in str(link) for marker in _READ_ONLY_TEXT):
            read_only = code == errno.EROFS or _READ_ONLY_TEXT[0] in str(link)
            why, fix = (("its file system is read-only", "") if read_only else
                        ("permission denied", "make it (and its folder) writable for this user, or "))
            return f"cannot write {where}: {why} ({_first_line(link)}); {fix}use an audit database in a writable folder"
    return None


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
