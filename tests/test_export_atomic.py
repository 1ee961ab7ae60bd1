"""Export across its two files: both written or neither, a folder or an existing file at --out refused in one line
(--force overwrites), the umask's usual permissions, and one changelog per exported file."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from auditor.review import export
from auditor.review.export import ExportError, export_manifest
from auditor.review.reviews import record_decisions
from pipelines.cli import main
from tests.test_export import reviewed  # noqa: F401  (the audited database with decisions)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file in `folder`, hidden temp files included, by name."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Set the process umask for one test; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def test_blocked_changelog_writes_nothing(reviewed, tmp_path, capsys):  # noqa: F811
    store, _ = reviewed
    out = tmp_path / "out"
    (out / "clean.changelog.csv").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"clean\.changelog\.csv is a folder; name a file instead"):
        export_manifest(store, out / "clean.csv")
    assert _files(out) == {}
    assert main(["export", "--db", str(store.path), "--out", str(out / "clean.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memaudit: error: ") and err.count("\n") == 1 and "is a folder" in err
    assert _files(out) == {}


@pytest.mark.parametrize("earlier", [True, False])
def test_a_failed_rename_puts_both_files_back(reviewed, tmp_path, monkeypatch, earlier):  # noqa: F811
    store, ids = reviewed
    out = tmp_path / "exports" / "clean.parquet"
    out.parent.mkdir()
    if earlier:
        export_manifest(store, out)
    before = _files(out.parent)
    record_decisions(store, [ids["leaked"]], "remove", reviewer="ana")
    real_replace = os.replace

    def changelog_blocked(src, dst):
        if Path(dst).name.startswith("clean.changelog"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", changelog_blocked)
    with pytest.raises(ExportError, match=r"could not write .*clean\.changelog\.parquet\.csv: Permission denied; "
                                          "the previous files are left unchanged"):
        export_manifest(store, out)
    assert _files(out.parent) == before


def test_out_folder_or_existing_file_is_one_line(reviewed, tmp_path, capsys):  # noqa: F811
    store, ids = reviewed
    export_args = ["export", "--db", str(store.path), "--out"]
    exports = tmp_path / "exports"
    exports.mkdir()
    assert main([*export_args, str(exports)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{exports} is a folder" in err
    out = exports / "clean.csv"
    assert main([*export_args, str(out)]) == 0
    capsys.readouterr()
    first = _files(exports)
    record_decisions(store, [ids["leaked"]], "remove", reviewer="ana")
    assert main([*export_args, str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"memaudit: error: {out} already exists; overwrite it (memaudit export --force) or choose " \
                  "another name\n"
    assert _files(exports) == first
    assert main([*export_args, str(out), "--force"]) == 0
    assert ids["leaked"] not in out.read_text() and _files(exports).keys() == first.keys()


def test_exports_keep_the_umask_permissions(reviewed, tmp_path, umask):  # noqa: F811
    store, _ = reviewed
    out = tmp_path / "clean.csv"
    out.write_text("old")
    out.chmod(0o644)
    summary = export_manifest(store, out)
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(summary.changelog.stat().st_mode) == 0o644
    umask(0o027)
    fresh = export_manifest(store, tmp_path / "fresh.jsonl")
    assert {stat.S_IMODE(p.stat().st_mode) for p in (fresh.path, fresh.changelog)} == {0o640}


def test_each_export_has_its_own_changelog(reviewed, tmp_path):  # noqa: F811
    store, ids = reviewed
    as_csv = export_manifest(store, tmp_path / "clean.csv")
    csv_log = as_csv.changelog.read_bytes()
    record_decisions(store, [ids["leaked"]], "remove", reviewer="ana")
    as_jsonl = export_manifest(store, tmp_path / "clean.jsonl")
    assert as_csv.changelog == tmp_path / "clean.changelog.csv"
    assert as_jsonl.changelog == tmp_path / "clean.changelog.jsonl.csv"
    assert as_csv.changelog.read_bytes() == csv_log
    assert ids["leaked"] in as_jsonl.changelog.read_text() and ids["leaked"] not in csv_log.decode()
