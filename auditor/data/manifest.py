"""Turn the user's DATA argument (ImageFolder tree or manifest file) into candidate rows and row-level problems."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pandas as pd

REQUIRED_COLUMNS = ("path", "label", "split")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl")
SPLIT_ALIASES = {"train": "train", "training": "train", "test": "test", "testing": "test",
                 "val": "val", "valid": "val", "validation": "val", "dev": "val"}


class ManifestError(ValueError):
    """The DATA argument as a whole cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Row:
    """One image the user asked us to audit, before it is decoded."""

    source: str        # where it came from: "manifest.csv:17" or the file path for a folder
    sample_id: str
    path: Path         # absolute
    label: str
    split: str
    given: str = ""    # the path as the manifest (or the folder walk) wrote it, before resolving


@dataclass
class Problem:
    """Something wrong with one input row or file; recorded in `problems`, never silently dropped."""

    source: str
    sample_id: str | None
    reason: str
    code: str = "unreadable"  # unreadable|layout|duplicate_id|missing_path|missing_label|unknown_label|bad_split|converted
    #                           |animated|channels|outside_root
    severity: str = "error"       # error: the row is left out; warning: the row is kept (e.g. converted)
    action: str = "skipped"       # skipped | converted | first_frame | kept
    stage: str = "ingest"


@dataclass
class Listing:
    """Rows to decode plus the problems found while listing them."""

    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    root: Path | None = None


def list_inputs(data: str | Path, *, allow_outside_root: bool = False) -> Listing:
    """Dispatch on the DATA argument: a manifest file or an ImageFolder directory with split folders. Files that
    resolve outside the dataset root (`..`, absolute paths, symlinks) are problem rows unless `allow_outside_root`."""
    path = Path(data).expanduser()
    if path.is_dir():
        listing = _list_image_folder(path)
    elif path.suffix.lower() in MANIFEST_SUFFIXES:
        if not path.exists():
            raise ManifestError(f"manifest {path} does not exist")
        listing = _list_manifest(path)
    else:
        _raise_not_data(path, data)
    return listing if allow_outside_root else confine(listing)


def _raise_not_data(path: Path, data: str | Path) -> NoReturn:
    """Refuse a DATA argument that is neither a folder nor a manifest file."""
    if not path.exists():
        raise ManifestError(f"DATA '{data}' is neither 'default', an existing folder, nor a manifest file "
                            f"({', '.join(MANIFEST_SUFFIXES)})")
    raise ManifestError(f"{path} is not a folder and not a manifest; manifests must end in "
                        f"{', '.join(MANIFEST_SUFFIXES)}")


def _escape(given: str, resolved: Path) -> str:
    """How a path that resolves to `resolved` got out of the root: '..', an absolute path or a symlink."""
    if Path(given).is_absolute():
        return f"absolute path {given} resolves to {resolved}"
    if ".." in Path(given).parts:
        return f"'..' in {given} leads to {resolved}"
    return f"{given} is (or passes through) a symlink to {resolved}"


def confine(listing: Listing) -> Listing:
    """Keep the rows whose file, every symlink resolved, lies inside `listing.root`; each other row becomes an
    `outside_root` problem naming the rule (data.allow_outside_root) and the fix."""
    if listing.root is None:
        return listing
    kept = []
    for row in listing.rows:
        if row.path.is_relative_to(listing.root):
            kept.append(row)
            continue
        listing.problems.append(Problem(
            row.source, row.sample_id, f"outside the dataset root {listing.root}: {_escape(row.given, row.path)}; "
            "only files under the root are read unless data.allow_outside_root = true (set it in a --config file "
            "if you trust this data), or move the file under the root", code="outside_root"))
    listing.rows = kept
    return listing


def _list_image_folder(root: Path) -> Listing:
    listing = Listing(root=root.resolve())
    split_dirs = {}
    for child in sorted(root.iterdir()):
        split = SPLIT_ALIASES.get(child.name.lower()) if child.is_dir() else None
        if split is None:
            listing.problems.append(Problem(str(child), None, "not a split folder (train/, test/, val/); ignored",
                                            code="layout", severity="warning"))
        elif split in split_dirs:
            raise ManifestError(f"{root} has two folders for split '{split}': {split_dirs[split].name} and "
                                f"{child.name}; keep one")
        else:
            split_dirs[split] = child
    if "train" not in split_dirs:
        raise ManifestError(f"{root} has no train/ folder; an ImageFolder dataset needs train/<class>/<image> "
                            "and test/<class>/<image>")
    for split, split_dir in sorted(split_dirs.items()):
        for entry in _files_under(split_dir, listing):
            rel = entry.relative_to(root).as_posix()
            parts = entry.relative_to(split_dir).parts
            if len(parts) != 2:
                listing.problems.append(Problem(
                    str(entry), rel, f"not directly inside a class folder of {split_dir.name}/; "
                    "move it to <split>/<class>/<file>", code="layout"))
                continue
            listing.rows.append(Row(str(entry), rel, entry.resolve(), parts[0], split, rel))
    return listing


def _files_under(top: Path, listing: Listing) -> list[Path]:
    """Every non-folder entry under `top`, sorted; symlinked folders are walked like real ones, and a folder met a
    second time (a symlink loop or a second link to it) is reported in `listing` instead of walked again."""
    seen: set[Path] = set()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        here = Path(dirpath)
        seen.add(here.resolve())
        for name in list(dirnames):
            target = (here / name).resolve()
            if target in seen:
                dirnames.remove(name)
                listing.problems.append(Problem(
                    str(here / name), None, f"folder links to {target}, which is already walked (a symlink loop or "
                    "a second link); its images are read once, through the first path", code="layout",
                    severity="warning"))
            else:
                seen.add(target)
        found.extend(here / name for name in filenames)
    return sorted(found)


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        if suffix == ".parquet":
            return pd.read_parquet(path).astype(object)
        records = []
        with path.open(encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ManifestError(f"{path}:{lineno} is not valid JSON ({exc.msg}); one object per line") from None
                if not isinstance(record, dict):
                    raise ManifestError(f"{path}:{lineno} is not a JSON object; one object per line")
                records.append(record)
        return pd.DataFrame.from_records(records)
    except ManifestError:
        raise
    except UnicodeDecodeError:
        raise ManifestError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path} is empty; it needs a header row with columns {', '.join(REQUIRED_COLUMNS)}") from None
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise ManifestError(f"{path} cannot be parsed as {suffix[1:]}: {exc}") from None


def _cell(value) -> str:
    """A manifest cell as text; None/NaN become the empty string."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def _delimiter_hint(columns: list[str]) -> str:
    """For a CSV read as one column whose name holds another separator (';', tab, '|'): how to fix it; else ''."""
    if len(columns) != 1:
        return ""
    found = [sep for sep in (";", "\t", "|") if sep in columns[0]]
    return (f"; the header looks {found[0]!r}-separated: save the file with commas between the columns "
            "(memaudit reads comma-separated CSV)") if found else ""


def _list_manifest(path: Path) -> Listing:
    table = _read_table(path)
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(
            f"manifest {path} is missing the column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)}; it has {', '.join(map(repr, table.columns)) or 'no columns'} "
            f"and needs path, label, split (sample_id optional){_delimiter_hint(list(table.columns))}")
    root = path.parent.resolve()
    listing = Listing(root=root)
    has_id = "sample_id" in table.columns
    # Header is line 1 in CSV; JSONL/Parquet rows are numbered from 1 as well.
    offset = 2 if path.suffix.lower() == ".csv" else 1
    for i, rec in enumerate(table.to_dict("records")):
        source = f"{path.name}:{i + offset}"
        rel, label, split = _cell(rec["path"]), _cell(rec["label"]), _cell(rec["split"]).lower()
        sample_id = _cell(rec["sample_id"]) if has_id else ""
        sample_id = sample_id or rel
        if not rel:
            listing.problems.append(Problem(source, sample_id or None, "empty path; fill the path column", code="missing_path"))
            continue
        if not label:
            listing.problems.append(Problem(source, sample_id, "missing label; fill the label column",
                                            code="missing_label"))
            continue
        if split not in SPLIT_ALIASES:
            listing.problems.append(Problem(source, sample_id, f"unknown split '{rec['split']}'; use train, test or val",
                                            code="bad_split"))
            continue
        file_path = Path(rel)
        file_path = (file_path if file_path.is_absolute() else root / file_path).resolve()
        listing.rows.append(Row(source, sample_id, file_path, label, SPLIT_ALIASES[split], rel))
    return listing


def check_rows(listing: Listing) -> Listing:
    """Drop (and report) duplicate sample ids and labels that do not occur in train."""
    seen: dict[str, str] = {}
    unique: list[Row] = []
    for row in listing.rows:
        if row.sample_id in seen:
            listing.problems.append(Problem(row.source, row.sample_id,
                                            f"duplicate sample_id (first used at {seen[row.sample_id]}); "
                                            "give each row a unique sample_id", code="duplicate_id"))
            continue
        seen[row.sample_id] = row.source
        unique.append(row)
    train_labels = {r.label for r in unique if r.split == "train"}
    kept = []
    for row in unique:
        if row.split != "train" and row.label not in train_labels:
            listing.problems.append(Problem(row.source, row.sample_id,
                                            f"label '{row.label}' of a {row.split} image does not occur in train; "
                                            "the model cannot predict it - add train images or fix the label",
                                            code="unknown_label"))
            continue
        kept.append(row)
    listing.rows = kept
    return listing
