"""The one registry of flag kinds: for each kind its display name, colour, triage phrases, pair kinds, thresholds and
the style of its evidence. The schema's triage, the dashboard's names, colours and evidence, the detectors stage and
the run summary all read it; adding a kind adds one entry. Light on purpose: no torch, faiss or open_clip."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from auditor.detectors.pair_kinds import DUPLICATE_KINDS, LEAK_KINDS

# How the dashboard shows a flag's evidence: twins side by side, a cluster's members, the label vote, mem with its
# interval, or the flag's own detail (its `summary`, else its fields).
EVIDENCE_STYLES = ("twins", "cluster", "labels", "mem", "detail")
# The stages that write flags (each replaces its own kinds on a re-run).
STAGES = ("scores", "memorization", "detectors")


@dataclass(frozen=True)
class FlagKind:
    """One kind of flag: `triage` holds (kinds it needs besides itself, phrase) rules tried in order; `thresholds`
    maps each thresholded pair kind to the kind of its `thresholds` row; `detector` names the module whose
    `detect` the detectors stage calls (auditor.detectors.contract), empty for kinds the stage wires itself."""

    name: str
    display: str
    color: str
    stage: str
    evidence: str
    triage: tuple[tuple[tuple[str, ...], str], ...] = ()
    pair_kinds: tuple[str, ...] = ()
    thresholds: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    detector: str = ""


# Most important first: the order of triage, the review filter, the tiles, the findings and the map's colours.
REGISTRY: tuple[FlagKind, ...] = (
    FlagKind("unreadable", "Unreadable", "#000000", "scores", "detail",
             triage=(((), "unreadable: fix or remove the file"),)),
    FlagKind("leaked", "Leaked (train/test)", "#d62728", "detectors", "twins",
             triage=(((), "leaked into the test set: fix the split, do not drop blindly"),),
             pair_kinds=LEAK_KINDS,
             thresholds=MappingProxyType({"leak": "leaked", "pixel_leak": "pixel_leak"})),
    FlagKind("mislabeled", "Mislabeled", "#ff7f0e", "detectors", "labels",
             triage=((("memorized",), "likely mislabeled: relabel or remove"),
                     ((), "possible label issue: review"))),
    FlagKind("memorized", "Memorized", "#9467bd", "memorization", "mem",
             triage=((("long_tail",), "rare sub-population: keep (and collect more like it)"),
                     ((), "memorized, no label issue found: likely rare, worth keeping"))),
    FlagKind("duplicate", "Duplicate", "#1f77b4", "detectors", "twins",
             triage=(((), "duplicate: keep one copy"),),
             pair_kinds=DUPLICATE_KINDS,
             thresholds=MappingProxyType({"near_duplicate": "duplicate", "pixel_duplicate": "pixel_duplicate"})),
    FlagKind("long_tail", "Long tail", "#2ca02c", "detectors", "cluster",
             triage=(((), "long tail: under-represented, collect more"),)),
    FlagKind("outlier", "Outlier", "#8c564b", "detectors", "detail",
             triage=(((), "outlier: far from every other image, check it belongs in the dataset"),),
             detector="auditor.detectors.outliers"),
    FlagKind("image_quality", "Image quality", "#e377c2", "detectors", "detail",
             triage=(((), "poor image quality: check the file, remove if unusable"),),
             detector="auditor.detectors.image_quality"),
    FlagKind("memorized_uncertain", "Memorized? (uncertain)", "#c5b0d5", "memorization", "mem",
             triage=(((), "memorization uncertain: more shadow models would decide"),)),
    FlagKind("memorized_candidate", "Memorized candidate", "#bcbd22", "scores", "detail"),
)
KINDS: Mapping[str, FlagKind] = MappingProxyType({kind.name: kind for kind in REGISTRY})
FLAG_PRIORITY: tuple[str, ...] = tuple(KINDS)


def kinds_of_stage(stage: str) -> tuple[str, ...]:
    """The flag kinds that `stage` writes, in priority order."""
    if stage not in STAGES:
        raise ValueError(f"no stage {stage!r} writes flags; use one of {', '.join(STAGES)}")
    return tuple(kind.name for kind in REGISTRY if kind.stage == stage)


def evidence_style(kind: str) -> str:
    """The evidence style of flag kind `kind` ('detail' for a kind the registry does not know)."""
    return KINDS[kind].evidence if kind in KINDS else "detail"


def pair_kinds() -> dict[str, tuple[str, ...]]:
    """The pair kinds behind each flag kind that has twins ('leaked' pairs: training image a_id, test image b_id)."""
    return {kind.name: kind.pair_kinds for kind in REGISTRY if kind.pair_kinds}


def threshold_kinds() -> dict[str, str]:
    """The `thresholds` row kind of each thresholded pair kind."""
    return {pair: row for kind in REGISTRY for pair, row in kind.thresholds.items()}


def detector_modules() -> dict[str, str]:
    """The module of each flag kind that a contract detector writes, in priority order."""
    return {kind.name: kind.detector for kind in REGISTRY if kind.detector}


def triage_sql(kinds: str) -> str:
    """A CASE expression that reads a sample's flag kinds (the SQL list expression `kinds`) together and names what to
    do: the first rule, in priority order, whose kinds the list holds. NULL for a sample without such a rule."""
    whens = []
    for kind in REGISTRY:
        for also, phrase in kind.triage:
            needs = " AND ".join(f"list_contains({kinds}, '{name}')" for name in (kind.name, *also))
            whens.append(f"        WHEN {needs} THEN '{phrase.replace(chr(39), chr(39) * 2)}'")
    return "CASE\n" + "\n".join(whens) + "\n    END"
