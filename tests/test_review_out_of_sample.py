"""Review tiles show the out-of-sample prediction (the shadow models trained without the image) beside the in-sample
one (issue 15; Streamlit AppTest on a private copy of the small pipeline-written database)."""

from __future__ import annotations

import numpy as np

from auditor.review import queries
from auditor.store.database import Store
from test_app import shown_ids, tiles
from test_dashboard_pages import db, page  # noqa: F401 (fixture)


def test_tiles_show_the_out_of_sample_prediction_with_its_probability(db):
    store = Store(db)
    at = page("review", page_size=48)
    ids, texts = shown_ids(at), tiles(at)
    assert len(ids) == len(texts) == 48
    raw = store.query(
        "SELECT sp.sample_id, sp.probs FROM shadow_predictions sp JOIN shadow_models m USING (model_id) "
        "JOIN shadow_designs d USING (design_id) WHERE NOT sp.in_shard AND sp.probs IS NOT NULL "
        "AND d.run_id = (SELECT max(mem_run_id) FROM scores) AND list_contains(?, sp.sample_id)", [ids])
    labels = queries.class_labels(store)
    given = store.query("SELECT sample_id, label FROM samples").set_index("sample_id")["label"]
    left_out = raw.groupby("sample_id")["probs"].apply(lambda probs: np.mean(np.stack(probs.tolist()), axis=0))
    assert len(left_out) >= 10, "the memorization stage left too few of these images out of a shadow model"
    for sample_id, text in zip(ids, texts):
        if sample_id not in left_out.index:
            assert "out of sample" not in text
            continue
        mean = left_out[sample_id]
        k = int(np.argmax(mean))
        label = labels[k] if labels[k] == given[sample_id] else f":red[**{labels[k]}**]"
        models = int((raw["sample_id"] == sample_id).sum())
        assert f"out of sample {label} ({mean[k]:.2f}) :gray[({models} model{'s' if models != 1 else ''} without it)]" \
            in text, (sample_id, text)
