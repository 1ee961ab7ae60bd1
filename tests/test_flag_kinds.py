"""The flag-kind registry is complete and the one source of every list of kinds: each entry has every field, and the
schema's triage and priority, the dashboard's names, colours, evidence line and evidence panel, the pair kinds of
the queries and the detectors stage's kinds cover exactly the registry's kinds."""

from __future__ import annotations

import json
import re

import duckdb
import pandas as pd
import pytest

from app import common, evidence
from auditor.detectors import flag_kinds
from auditor.review import queries
from auditor.store import store_views
from auditor.detectors.flag_kinds import EVIDENCE_STYLES, KINDS, REGISTRY, STAGES, FlagKind
from auditor.store.database import Store


@pytest.mark.parametrize("kind", REGISTRY, ids=lambda k: k.name)
def test_each_kind_has_every_field(kind: FlagKind):
    assert re.fullmatch(r"[a-z][a-z_]*", kind.name)
    assert kind.display.strip() and kind.display != kind.name
    assert re.fullmatch(r"#[0-9a-f]{6}", kind.color)
    assert kind.stage in STAGES and kind.evidence in EVIDENCE_STYLES
    for also, phrase in kind.triage:
        assert set(also) <= set(KINDS) - {kind.name} and phrase.strip()
    assert bool(kind.pair_kinds) == (kind.evidence == "twins")
    assert set(kind.thresholds) <= set(kind.pair_kinds)


def test_names_and_colours_are_unique_and_pair_kinds_belong_to_one_kind():
    assert len(KINDS) == len(REGISTRY)
    assert len({k.color for k in REGISTRY}) == len(REGISTRY)
    assert len({k.display for k in REGISTRY}) == len(REGISTRY)
    pairs = [p for k in REGISTRY for p in k.pair_kinds]
    assert len(pairs) == len(set(pairs))


def test_priority_and_triage_of_the_schema_follow_the_registry(tmp_path):
    assert store_views.FLAG_PRIORITY == queries.FLAG_PRIORITY == tuple(k.name for k in REGISTRY)
    db = Store(tmp_path / "a.duckdb")
    db.init()
    # One sample per triage rule carrying exactly the kinds the rule needs, one per kind alone.
    rows, expected = [], {}
    for kind in REGISTRY:
        for i, (also, phrase) in enumerate(kind.triage):
            sample = f"{kind.name}-{i}"
            rows += [(sample, name) for name in (kind.name, *also)]
            expected[sample] = phrase
        rows.append((f"{kind.name}-alone", kind.name))
        expected[f"{kind.name}-alone"] = next((p for also, p in kind.triage if not also), None)
    flags = pd.DataFrame(rows, columns=["sample_id", "kind"]).assign(score=1.0, detail="", run_id="r")
    samples = pd.DataFrame({"sample_id": sorted(expected), "split": "train", "label": "a", "path": "p"})
    db.write([("samples", samples), ("flags", flags)])
    audit = db.query("SELECT sample_id, triage FROM audit").set_index("sample_id")["triage"]
    summary = db.query("SELECT sample_id, triage, top_flag FROM sample_flags").set_index("sample_id")
    for sample, phrase in expected.items():
        assert (None if pd.isna(audit[sample]) else audit[sample]) == phrase, sample
        assert (None if pd.isna(summary.loc[sample, "triage"]) else summary.loc[sample, "triage"]) == phrase, sample
        assert summary.loc[sample, "top_flag"] == sample.rsplit("-", 1)[0]  # each rule's own kind ranks first


def test_triage_sql_escapes_quotes(monkeypatch):
    quoted = FlagKind("odd", "Odd", "#123456", "scores", "detail", triage=(((), "don't drop it"),))
    monkeypatch.setattr(flag_kinds, "REGISTRY", (quoted,))
    sql = flag_kinds.triage_sql("['odd']::VARCHAR[]")
    assert duckdb.connect().execute(f"SELECT {sql}").fetchone()[0] == "don't drop it"


def test_the_dashboard_names_colours_and_evidence_cover_exactly_the_registry():
    assert set(common.FLAG_NAMES) - {"none"} == set(KINDS) == set(common.FLAG_COLORS) - {"none"}
    assert list(common.FLAG_COLORS)[:-1] == list(KINDS)  # legend order is priority order
    assert set(evidence.EVIDENCE) == set(EVIDENCE_STYLES)
    assert {kind.evidence for kind in REGISTRY} <= set(evidence.EVIDENCE)
    assert set(queries.PAIR_KINDS) == {k.name for k in REGISTRY if k.evidence == "twins"}


@pytest.mark.parametrize("kind", REGISTRY, ids=lambda k: k.name)
def test_the_evidence_line_of_each_kind_follows_its_style(kind: FlagKind):
    detail = json.dumps({"twin": "t9", "similarity": 0.5, "given": "3", "suggested": "8", "cluster_size": 2,
                         "summary": "the summary"})
    line = common.evidence_line(kind.name, detail, "7")
    assert line.startswith(common.md(kind.name.replace("_", " ")) + ": ")
    expected = {"twins": "twin t9 (0.500)", "labels": "given 3 → suggested **8**",
                "cluster": "cluster of 2 in class 7"}.get(kind.evidence, "the summary")
    assert expected in line


def test_the_detectors_stage_replaces_exactly_the_registry_kinds_of_its_stage():
    from pipelines.detectors_stage import DETECTOR_KINDS, THRESHOLD_KINDS

    assert set(DETECTOR_KINDS) == {k.name for k in REGISTRY if k.stage == "detectors"}
    assert set(THRESHOLD_KINDS) == {p for k in REGISTRY for p in k.thresholds}
    with pytest.raises(ValueError, match="no stage 'ingest' writes flags"):
        flag_kinds.kinds_of_stage("ingest")


def test_every_kind_the_pipeline_writes_is_registered(small_db):
    written = set(Store(small_db).query("SELECT DISTINCT kind FROM flags")["kind"])
    assert written and written <= set(KINDS), f"unregistered flag kinds: {sorted(written - set(KINDS))}"


@pytest.mark.parametrize("kind, module", flag_kinds.detector_modules().items())
def test_each_contract_detector_is_one_module_declaring_its_kind(kind: str, module: str):
    import importlib

    loaded = importlib.import_module(module)
    assert module.startswith("auditor.detectors.") and loaded.KIND == kind and callable(loaded.detect)
    assert KINDS[kind].stage == "detectors"
