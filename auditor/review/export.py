"""The cleaned manifest: the audited samples with the review decisions applied, in the input manifest's format (so
`memaudit run --data <export>` audits it again), plus a changelog of every change; both written atomically."""

from __future__ import annotations

import os
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from auditor.detectors.pair_kinds import DUPLICATE_KINDS
from auditor.data.ingest import class_order
from auditor.data.manifest import MANIFEST_SUFFIXES
from auditor.review.queries import FLAG_PRIORITY, flag_kinds
from auditor.review.reviews import current_decisions
from auditor.store.database import Store

MANIFEST_COLUMNS = ["sample_id", "path", "label", "split"]
CHANGELOG_COLUMNS = ["sample_id", "change", "old_label", "new_label", "reason"]
WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    "csv": lambda frame, path: frame.to_csv(path, index=False),
    "parquet": lambda frame, path: frame.to_parquet(path, index=False),
    "jsonl": lambda frame, path: frame.to_json(path, orient="records", lines=True, force_ascii=False),
}


class ExportError(RuntimeError):
    """The export could not be written; the previous files at the target paths are left as they were."""


@dataclass
class ExportSummary:
    """What an export wrote and changed; `by_class` has class, before, after, removed, relabeled_in, relabeled_out."""

    path: Path
    changelog: Path
    rows_in: int
    rows_out: int
    removed: int
    relabeled: int
    dropped_by_kind: dict[str, int]
    by_class: pd.DataFrame


def _check_kinds(store: Store, drop_kinds: Sequence[str]) -> list[str]:
    """`drop_kinds` without repeats, each a flag kind present in the file or known to memaudit."""
    kinds = list(dict.fromkeys(drop_kinds))
    known = list(dict.fromkeys([*flag_kinds(store), *FLAG_PRIORITY]))
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown flag kind(s) {', '.join(unknown)}; use one of: {', '.join(known)}")
    return kinds


def _reason(row: tuple) -> str:
    """'note (reviewer, decided at)' of a decision, or the flag kinds that dropped an unreviewed sample."""
    if pd.isna(row.action):
        return f"unreviewed, flagged {', '.join(row.kinds)}"
    who = f"{row.reviewer}, {row.decided_at:%Y-%m-%d %H:%M:%S} UTC"
    return f"{row.note} ({who})" if isinstance(row.note, str) and row.note else f"({who})"


def _plan(store: Store, apply_relabels: bool, drop_removed: bool, kinds: list[str]) -> pd.DataFrame:
    """Every sample with its decision, the drop kinds it carries, and what the export does with it (`change`)."""
    samples = store.query("SELECT sample_id, path, label, split FROM samples ORDER BY sample_id")
    decisions = current_decisions(store).drop(columns=["split", "label", "path"])
    flagged = store.query("SELECT sample_id, list(DISTINCT kind ORDER BY kind) AS kinds FROM flags "
                          "WHERE list_contains(?::VARCHAR[], kind) GROUP BY sample_id", [kinds])
    rows = samples.merge(decisions, on="sample_id", how="left").merge(flagged, on="sample_id", how="left")
    removed = (rows["action"] == "remove") & drop_removed
    relabeled = (rows["action"] == "relabel") & apply_relabels & (rows["new_label"] != rows["label"])
    dropped = rows["action"].isna() & rows["kinds"].notna()
    if "duplicate" in kinds:  # "keep one copy": the first surviving copy of each group stays
        only_duplicate = rows["kinds"].map(lambda k: isinstance(k, list | np.ndarray) and list(k) == ["duplicate"])
        dropped &= ~(only_duplicate & rows["sample_id"].isin(_duplicate_keepers(store, rows)))
    rows["change"] = np.select([removed, relabeled, dropped], ["removed", "relabeled", "dropped_unreviewed"], None)
    return rows


def _duplicate_keepers(store: Store, rows: pd.DataFrame) -> set[str]:
    """One copy per group of duplicates (connected by duplicate pairs): the lowest sample id not removed by a
    decision, so dropping the kind `duplicate` keeps one copy of each image, as Triage says."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = store.query("SELECT a_id, b_id FROM pairs WHERE list_contains(?::VARCHAR[], kind)", [list(DUPLICATE_KINDS)])
    if pairs.empty:
        return set()
    codes, ids = pd.factorize(pd.concat([pairs["a_id"], pairs["b_id"]]), sort=True)
    n = len(ids)
    graph = coo_matrix((np.ones(len(pairs)), (codes[:len(pairs)], codes[len(pairs):])), shape=(n, n))
    groups = pd.DataFrame({"sample_id": ids, "group": connected_components(graph, directed=False)[1]})
    removed = set(rows.loc[rows["action"] == "remove", "sample_id"])
    alive = groups[~groups["sample_id"].isin(removed)]
    return set(alive.sort_values("sample_id").drop_duplicates("group")["sample_id"])


def plan_export(store: Store, *, apply_relabels: bool = True, drop_removed: bool = True,
                drop_kinds: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cleaned manifest rows and the changelog rows, without writing anything (the dashboard's preview)."""
    return _split(_plan(store, apply_relabels, drop_removed, _check_kinds(store, drop_kinds)))


def _split(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest, changelog) of a plan."""
    relabeled = rows["change"] == "relabeled"
    manifest = rows[~rows["change"].isin(["removed", "dropped_unreviewed"])].assign(
        label=rows["new_label"].where(relabeled, rows["label"]))[MANIFEST_COLUMNS].reset_index(drop=True)
    changed = rows[rows["change"].notna()]
    changelog = pd.DataFrame({
        "sample_id": changed["sample_id"], "change": changed["change"], "old_label": changed["label"],
        "new_label": changed["new_label"].where(changed["change"] == "relabeled"),
        "reason": [_reason(row) for row in changed.itertuples(index=False)]}, columns=CHANGELOG_COLUMNS)
    return manifest, changelog.reset_index(drop=True)


def _by_class(rows: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Per class: rows before and after, dropped (removed or by kind), relabeled into and out of it."""
    relabeled = rows[rows["change"] == "relabeled"]
    counts = {"before": rows["label"], "after": manifest["label"],
              "removed": rows.loc[rows["change"].isin(["removed", "dropped_unreviewed"]), "label"],
              "relabeled_in": relabeled["new_label"], "relabeled_out": relabeled["label"]}
    classes = class_order({*rows["label"], *relabeled["new_label"]})
    table = pd.DataFrame({name: labels.value_counts().reindex(classes, fill_value=0).to_numpy()
                          for name, labels in counts.items()})
    table.insert(0, "class", classes)
    return table


def _output(out: Path, fmt: str | None) -> tuple[Path, str]:
    """The target path and its format: the suffix decides (the manifest reader goes by it); a bare name gets one."""
    _check_targets([out], overwrite=True)
    suffix = out.suffix.lower()
    if fmt is None:
        if suffix not in MANIFEST_SUFFIXES:
            raise ValueError(f"cannot tell the format of {out} from its suffix; end it in "
                             f"{', '.join(MANIFEST_SUFFIXES)} or pass a format")
        return out, suffix[1:]
    if f".{fmt}" not in MANIFEST_SUFFIXES:
        raise ValueError(f"unknown export format {fmt!r}; use one of: {', '.join(WRITERS)}")
    if not suffix:
        return out.with_suffix(f".{fmt}"), fmt
    if suffix != f".{fmt}":
        raise ValueError(f"{out} ends in {suffix} but the format is {fmt}; manifests are read by their suffix, so "
                         f"name it {out.with_suffix(f'.{fmt}').name}")
    return out, fmt


def _changelog_path(path: Path, fmt: str) -> Path:
    """The changelog of the manifest at `path`: `<stem>.changelog.csv` for csv, `<stem>.changelog.<fmt>.csv` for the
    other formats, so exports of one stem in two formats never share (and overwrite) one changelog."""
    return path.with_name(f"{path.stem}.changelog.csv" if fmt == "csv" else f"{path.stem}.changelog.{fmt}.csv")


def _check_targets(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, a target that is a folder, or that exists when `overwrite` is off."""
    for path in paths:
        if path.is_dir():
            raise ValueError(f"{path} is a folder; name a file instead, e.g. {path / 'cleaned.csv'}")
        if not overwrite and (path.exists() or path.is_symlink()):
            raise ExportError(f"{path} already exists; overwrite it (memaudit export --force) or choose another name")


def _beside(path: Path, tag: str) -> Path:
    """A fresh hidden name in `path`'s folder: `.<name>.<random>.<tag>`."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{tag}")


def _write_temp(path: Path, write: Callable[[Path], None]) -> Path:
    """`write` into a new temp file beside `path`, fsynced; created with the umask's usual permissions (not 0600)."""
    temp = _beside(path, "tmp")
    os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(temp)
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _backup(path: Path) -> Path | None:
    """A hard link to (or, where links fail, a copy of) the file at `path`, to put back if the export fails; None when
    there is no file there."""
    if not path.exists():
        return None
    backup = _beside(path, "bak")
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
    return backup


def _install(temps: list[Path], paths: list[Path]) -> None:
    """Rename every temp onto its target, or none: when one rename fails, the targets already replaced get their
    previous file back (or are removed if they had none)."""
    backups: list[Path | None] = []
    replaced: list[tuple[Path, Path | None]] = []
    try:
        backups.extend(_backup(path) for path in paths)
        for temp, path, backup in zip(temps, paths, backups):
            os.replace(temp, path)
            replaced.append((path, backup))
    except OSError as exc:
        for path, backup in reversed(replaced):
            if backup is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(backup, path)
        raise ExportError(f"could not write {exc.filename or paths[0]}: {exc.strerror or exc}; the previous files "
                          "are left unchanged") from exc
    finally:
        for leftover in [*temps, *(b for b in backups if b is not None)]:
            leftover.unlink(missing_ok=True)


def _write_atomically(targets: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write every target to a temp file beside it, then move them all into place (see `_install`); on any failure
    the temp files are removed and the files already at the targets stay as they were."""
    temps: list[Path] = []
    path = targets[0][0]
    try:
        for path, write in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            temps.append(_write_temp(path, write))
    except BaseException as exc:
        for temp in temps:
            temp.unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
        raise ExportError(f"could not write {path}: {reason}; the previous file there is left unchanged") from exc
    _install(temps, [path for path, _ in targets])


def export_manifest(store: Store, out: Path, *, fmt: str | None = None, apply_relabels: bool = True,
                    drop_removed: bool = True, drop_kinds: Sequence[str] = (), overwrite: bool = True) -> ExportSummary:
    """Write the cleaned manifest (absolute paths; format from `fmt` or the suffix) and its changelog beside it, both
    or neither; without `overwrite`, an existing manifest or changelog is an ExportError."""
    path, fmt = _output(Path(out), fmt)
    changelog_path = _changelog_path(path, fmt)
    _check_targets([path, changelog_path], overwrite)
    kinds = _check_kinds(store, drop_kinds)
    rows = _plan(store, apply_relabels, drop_removed, kinds)
    manifest, changelog = _split(rows)
    _write_atomically([(path, lambda tmp: WRITERS[fmt](manifest, tmp)),
                       (changelog_path, lambda tmp: WRITERS["csv"](changelog, tmp))])
    dropped = Counter(kind for carried in rows.loc[rows["change"] == "dropped_unreviewed", "kinds"] for kind in carried)
    return ExportSummary(
        path=path, changelog=changelog_path, rows_in=len(rows), rows_out=len(manifest),
        removed=int((rows["change"] == "removed").sum()), relabeled=int((rows["change"] == "relabeled").sum()),
        dropped_by_kind={kind: dropped[kind] for kind in kinds},
        by_class=_by_class(rows, manifest))
