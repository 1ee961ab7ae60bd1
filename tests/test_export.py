"""The cleaned-manifest export: decisions and flag kinds applied, every format readable by the manifest reader, a
changelog, atomic writes, the `memaudit export` command and a round trip through `memaudit run`."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from auditor.review import export
from auditor.review.export import ExportError, export_manifest, plan_export
from auditor.data.manifest import check_rows, list_inputs
from auditor.review.reviews import record_decisions
from auditor.store.database import Store
from conftest import copy_audit
from pipelines.cli import main


@pytest.fixture
def reviewed(small_db, tmp_path) -> tuple[Store, dict[str, str]]:
    """A copy of the small audited database with decisions and planted `leaked` flags on known train samples:
    removed (class 0), relabeled 0 -> 7, kept but leaked, relabeled 1 -> 2 and leaked, leaked unreviewed."""
    store = Store(tmp_path / "audit.duckdb")
    shutil.copy(small_db, store.path)
    picks = store.query("SELECT label, list(sample_id ORDER BY sample_id)[1:3] AS ids FROM samples "
                        "WHERE split = 'train' AND label IN ('0', '1') GROUP BY label ORDER BY label")["ids"]
    (removed, relabeled, kept), (both, leaked, _) = picks
    record_decisions(store, [removed], "remove", reviewer="ana", note="not a digit")
    record_decisions(store, [relabeled], "relabel", reviewer="ana", new_label="7")
    record_decisions(store, [kept], "keep", reviewer="bo")
    record_decisions(store, [both], "relabel", reviewer="bo", new_label="2")
    store.append("flags", pd.DataFrame({"sample_id": [kept, both, leaked], "kind": "leaked", "score": 1.0}))
    return store, {"removed": removed, "relabeled": relabeled, "kept": kept, "both": both, "leaked": leaked}


def _labels(frame: pd.DataFrame) -> dict[str, str]:
    return frame.set_index("sample_id")["label"].to_dict()


@pytest.mark.parametrize("apply_relabels", [True, False])
@pytest.mark.parametrize("drop_removed", [True, False])
def test_decisions_applied_as_asked(reviewed, apply_relabels, drop_removed):
    store, ids = reviewed
    manifest, changelog = plan_export(store, apply_relabels=apply_relabels, drop_removed=drop_removed)
    labels = _labels(manifest)
    n_samples = int(store.scalar("SELECT count(*) FROM samples"))
    assert len(manifest) == n_samples - drop_removed
    assert (ids["removed"] not in labels) == drop_removed
    assert labels[ids["relabeled"]] == ("7" if apply_relabels else "0")
    assert labels[ids["both"]] == ("2" if apply_relabels else "1")
    assert ids["leaked"] in labels  # flags drop nothing unless asked
    expected = {change for change, on in (("removed", drop_removed), ("relabeled", apply_relabels)) if on}
    assert set(changelog["change"]) == expected
    assert list(manifest.columns) == ["sample_id", "path", "label", "split"]
    assert all(Path(p).is_absolute() for p in manifest["path"])


def test_drop_kinds_spares_reviewed_samples(reviewed):
    store, ids = reviewed
    manifest, changelog = plan_export(store, drop_kinds=["leaked"])
    labels = _labels(manifest)
    assert ids["leaked"] not in labels  # unreviewed: dropped
    assert labels[ids["kept"]] == "0" and labels[ids["both"]] == "2"  # decided keep / relabel: kept
    dropped = changelog[changelog["change"] == "dropped_unreviewed"]
    assert dropped["sample_id"].tolist() == [ids["leaked"]]
    assert dropped["reason"].tolist() == ["unreviewed, flagged leaked"]


def test_unknown_drop_kind_is_rejected(reviewed):
    store, _ = reviewed
    with pytest.raises(ValueError, match=r"unknown flag kind\(s\) leakd; use one of: .*leaked"):
        plan_export(store, drop_kinds=["leakd"])


def test_changelog_and_summary(reviewed, tmp_path):
    store, ids = reviewed
    summary = export_manifest(store, tmp_path / "out" / "clean.csv", drop_kinds=["leaked", "duplicate"])
    assert summary.changelog == tmp_path / "out" / "clean.changelog.csv"
    log = pd.read_csv(summary.changelog, dtype=str, keep_default_na=False).set_index("sample_id")
    assert log.loc[ids["removed"], ["change", "old_label", "new_label"]].tolist() == ["removed", "0", ""]
    assert log.loc[ids["removed"], "reason"].startswith("not a digit (ana, ")
    assert log.loc[ids["relabeled"], ["change", "old_label", "new_label"]].tolist() == ["relabeled", "0", "7"]
    assert log.loc[ids["both"], "reason"].startswith("(bo, ")
    assert log.loc[ids["leaked"], "change"] == "dropped_unreviewed"
    assert ids["kept"] not in log.index
    assert (summary.rows_in - summary.rows_out, summary.removed, summary.relabeled) == (2, 1, 2)
    assert summary.dropped_by_kind == {"leaked": 1, "duplicate": 0}
    by_class = summary.by_class.set_index("class")
    assert (by_class["before"] - by_class["removed"] - by_class["relabeled_out"] + by_class["relabeled_in"]
            == by_class["after"]).all()
    assert by_class.loc["0"].tolist() == [by_class.loc["0", "before"], by_class.loc["0", "before"] - 2, 1, 0, 1]
    assert by_class.loc["7", "relabeled_in"] == 1 and by_class["after"].sum() == summary.rows_out


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_every_format_reads_back_with_the_manifest_reader(reviewed, tmp_path, fmt):
    store, _ = reviewed
    summary = export_manifest(store, tmp_path / "clean", fmt=fmt)
    assert summary.path == tmp_path / f"clean.{fmt}"
    expected, _ = plan_export(store)
    # The export names the audited files by absolute path, outside its own folder: trusted explicitly.
    listing = check_rows(list_inputs(summary.path, allow_outside_root=True))
    assert listing.problems == []
    read = pd.DataFrame({"sample_id": [r.sample_id for r in listing.rows], "path": [str(r.path) for r in listing.rows],
                         "label": [r.label for r in listing.rows], "split": [r.split for r in listing.rows]})
    pd.testing.assert_frame_equal(read, expected)


@pytest.mark.parametrize(("out", "fmt", "message"), [
    ("clean.txt", None, "cannot tell the format"),
    ("clean.csv", "parquet", "ends in .csv but the format is parquet"),
    ("clean", "xlsx", "unknown export format"),
])
def test_bad_targets_are_rejected(reviewed, tmp_path, out, fmt, message):
    with pytest.raises(ValueError, match=message):
        export_manifest(reviewed[0], tmp_path / out, fmt=fmt)


def _disk_full(frame: pd.DataFrame, path: Path) -> None:
    Path(path).write_text("sample_id,path,la")  # a partial write, then the disk is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("manifest_format", ["csv", "parquet"])  # csv: the manifest fails; parquet: the changelog
def test_failed_write_keeps_the_previous_export(reviewed, tmp_path, monkeypatch, manifest_format):
    store, ids = reviewed
    out = tmp_path / f"clean.{manifest_format}"
    first = export_manifest(store, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("clean")}
    record_decisions(store, [ids["leaked"]], "remove", reviewer="ana")
    monkeypatch.setitem(export.WRITERS, "csv", _disk_full)
    failed = str(out if manifest_format == "csv" else first.changelog)
    with pytest.raises(ExportError, match=f"could not write {failed}: No space left on device"):
        export_manifest(store, out)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(("clean", ".clean"))}
    assert after == before


def test_cli_export(reviewed, tmp_path, capsys):
    store, _ = reviewed
    out = tmp_path / "clean.jsonl"
    assert main(["export", "--db", str(store.path), "--out", str(out), "--drop-kinds", "leaked",
                 "--no-relabels", "--keep-removed"]) == 0
    n = int(store.scalar("SELECT count(*) FROM samples"))
    assert capsys.readouterr().out.splitlines() == [
        f"exported {n - 1} of {n} rows to {out}", "  removed 0, relabeled 0, dropped unreviewed: leaked 1",
        f"  changelog: {tmp_path / 'clean.changelog.jsonl.csv'}"]
    for args in (["--drop-kinds", "nope"], ["--format", "parquet"]):
        assert main(["export", "--db", str(store.path), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("memaudit: error: ") and err.count("\n") == 1
    assert main(["export", "--db", str(tmp_path / "missing.duckdb"), "--out", str(tmp_path / "new.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_round_trip_through_memaudit_run(reviewed, tmp_path):
    store, ids = reviewed
    summary = export_manifest(store, tmp_path / "clean.csv", drop_kinds=["leaked"])
    db, trusted = tmp_path / "again.duckdb", tmp_path / "trusted.toml"
    trusted.write_text("[data]\nallow_outside_root = true\n")  # the export's paths lie outside its folder
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--data", str(summary.path), "--db", str(db),
                           "--stages", "ingest", "--profile", "quick", "--config", str(trusted)],
                          capture_output=True, text=True, check=False,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    again = Store(db)
    labels = _labels(again.query("SELECT sample_id, label FROM samples"))
    assert len(labels) == summary.rows_out
    assert ids["removed"] not in labels and ids["leaked"] not in labels
    assert (labels[ids["relabeled"]], labels[ids["both"]], labels[ids["kept"]]) == ("7", "2", "0")
    assert int(again.scalar("SELECT count(*) FROM problems WHERE severity = 'error'")) == 0


def test_dropping_duplicates_keeps_one_copy_of_each(planted_source, tmp_path):
    """On the real detectors' output for planted copies: dropping unreviewed `duplicate` images keeps one copy of each
    planted pair (as Triage says, "keep one copy"), and a copy removed by a reviewer lets the other one stay."""
    source, planted = planted_source
    store = Store(copy_audit(source, tmp_path / "planted"))
    manifest, changelog = plan_export(store, drop_kinds=["duplicate"])
    kept = set(manifest["sample_id"])
    for plant in ("duplicate", "pixel_duplicate"):
        source, copy = planted[plant]
        assert len({source, copy} & kept) == 1, plant  # exactly one of the pair survives
        assert {source, copy} - kept <= set(changelog["sample_id"])
    flagged = set(store.query("SELECT sample_id FROM flags WHERE kind = 'duplicate'")["sample_id"])
    assert flagged - kept and flagged & kept
    source, copy = planted["duplicate"]
    keeper = min(source, copy)
    record_decisions(store, [keeper], "remove", reviewer="t")
    manifest, _ = plan_export(store, drop_kinds=["duplicate"])
    assert keeper not in set(manifest["sample_id"]) and max(source, copy) in set(manifest["sample_id"])
