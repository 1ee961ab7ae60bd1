"""What the memorization stages write: mem and its state on `scores`, the memorized flags, influence, the estimate,
bands and proxy calibration in one transaction, and the exact-LOO `loo_scores`."""

from __future__ import annotations

import pandas as pd

from auditor.store.database import Store


def save_memorization(store: Store, method: str, note: str, run_id: str, scores: pd.DataFrame,
                      sampling: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> None:
    """In one transaction: clear mem on every score (noting `method`, `note` and `run_id`), set each point's
    sampling columns and its mem from `scores`, and replace the memorized flags, influence, estimate, bands and
    calibration with `tables`."""
    store.write(list(tables.items()), frames={"_mem": scores, "_sampling": sampling}, deletes=[
        ("UPDATE scores SET mem = NULL, mem_low = NULL, mem_high = NULL, mem_n_in = NULL, mem_n_out = NULL, "
         "mem_state = NULL, mem_method = ?, mem_note = ?, mem_run_id = ?", [method, note, run_id]),
        ("UPDATE scores SET apb_band = s.apb_band, mem_sampled = s.mem_sampled, mem_weight = s.mem_weight "
         "FROM _sampling s WHERE scores.sample_id = s.sample_id", []),
        ("UPDATE scores SET mem = m.mem, mem_low = m.mem_low, mem_high = m.mem_high, mem_n_in = m.mem_n_in, "
         "mem_n_out = m.mem_n_out, mem_state = m.mem_state, mem_run_id = m.mem_run_id, mem_note = NULL "
         "FROM _mem m WHERE scores.sample_id = m.sample_id", []),
        ("DELETE FROM flags WHERE kind IN ('memorized', 'memorized_uncertain')", []),
        ("DELETE FROM influence", []), ("DELETE FROM memorization_estimates", []),
        ("DELETE FROM memorization_bands", []), ("DELETE FROM proxy_calibration", [])])


def save_loo_scores(store: Store, run_id: str, frame: pd.DataFrame) -> None:
    """Replace run `run_id`'s exact-LOO scores with `frame`."""
    store.write([("loo_scores", frame.assign(run_id=run_id))],
                deletes=[("DELETE FROM loo_scores WHERE run_id = ?", [run_id])])
