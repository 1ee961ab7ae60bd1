"""The shadow-model tables as the memorization stage reads and writes them: `shadow_designs` and each committed block
of `shadow_models` with its `shadow_predictions`."""

from __future__ import annotations

import pandas as pd

from auditor.store.database import Store


def median_model_seconds(store: Store) -> float | None:
    """The median training time of the shadow models recorded so far (None before the first)."""
    return store.scalar("SELECT median(seconds) FROM shadow_models")


def design_saved(store: Store, design_id: str) -> bool:
    """Whether the design is already recorded."""
    return bool(store.scalar("SELECT count(*) FROM shadow_designs WHERE design_id = ?", [design_id]))


def committed_models(store: Store, design_id: str) -> set[int]:
    """The model indices of the design's committed models."""
    return set(store.query("SELECT model_index FROM shadow_models WHERE design_id = ?", [design_id])["model_index"])


def save_block(store: Store, model_ids: list[str], frames: list[tuple[str, pd.DataFrame]]) -> None:
    """Replace the rows of the models `model_ids` with `frames` (shadow_models, shadow_predictions) in one
    transaction."""
    marks = ", ".join("?" * len(model_ids))
    store.write(frames, deletes=[(f"DELETE FROM shadow_models WHERE model_id IN ({marks})", model_ids),
                                 (f"DELETE FROM shadow_predictions WHERE model_id IN ({marks})", model_ids)])


def design_correctness(store: Store, design_id: str) -> pd.DataFrame:
    """model_index, sample_id, split and correct of every prediction of the design's committed models."""
    return store.query("SELECT m.model_index, p.sample_id, p.split, p.correct FROM shadow_predictions p "
                       "JOIN shadow_models m USING (model_id) WHERE m.design_id = ?", [design_id])


def run_test_accuracies(store: Store, run_id: str) -> pd.Series:
    """The test accuracy of every shadow model of the designs of run `run_id`."""
    return store.query("SELECT m.test_acc FROM shadow_models m JOIN shadow_designs d USING (design_id) "
                       "WHERE d.run_id = ?", [run_id])["test_acc"]
