"""What the Overview page and `memaudit status` read about the memorization audit: the run, the mem histogram and
scatter, the estimated total of memorized images with the recall of the flags, the per-band audit and the
proxy-calibration report (no SQL in pages)."""

from __future__ import annotations

import pandas as pd

from auditor.store.database import Store


def _table(store: Store, table: str) -> pd.DataFrame | None:
    """All rows of one memorization table, or None when the database predates it."""
    return store.query(f"SELECT * FROM {table}") if table in store.tables() else None


def estimate(store: Store) -> dict | None:
    """The memorization_estimates row of the current audit as a dict (None before a memorization run wrote one)."""
    frame = _table(store, "memorization_estimates")
    if frame is None or frame.empty:
        return None
    return {k: None if not isinstance(v, str) and pd.isna(v) else v for k, v in frame.iloc[0].items()}


def bands(store: Store) -> pd.DataFrame:
    """The per-band audit (shortlist first, then ApB bands from low to high)."""
    frame = _table(store, "memorization_bands")
    return pd.DataFrame() if frame is None else frame.sort_values("band", kind="stable").reset_index(drop=True)


def calibration(store: Store) -> pd.DataFrame:
    """The proxy-calibration report: one row per proxy, strongest Spearman correlation with mem first."""
    frame = _table(store, "proxy_calibration")
    if frame is None or frame.empty:
        return pd.DataFrame()
    return frame.reindex(frame["spearman"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def estimate_lines(store: Store) -> list[str]:
    """The memorization audit in a few lines of text (for `memaudit status`); empty before the first estimate."""
    row = estimate(store)
    if row is None:
        return []
    lines = [f"  memorization ({row['method']}, threshold {row['threshold']:g}): {row['n_scored']:,} of "
             f"{row['n_train']:,} training points scored ({row['n_shortlist']:,} ApB shortlist, {row['n_audit']:,} "
             f"random audit, {row['n_extension']:,} from {row['bands_extended']} extended bands), "
             f"{row['n_models']:,} shadow models",
             f"    memorized {row['n_memorized']:,} ({row['n_memorized_certain']:,} with the whole interval above "
             f"the threshold), uncertain {row['n_uncertain']:,}, not memorized {row['n_not_memorized']:,}, "
             f"not scored {row['n_not_scored']:,}",
             f"    estimated memorized in the whole training set {row['est_total']:.0f} (95% interval "
             f"{row['est_low']:.0f} to {row['est_high']:.0f}); recall of the flags {_percent(row['recall'])} "
             f"({_percent(row['recall_low'])} to {_percent(row['recall_high'])})"]
    report = calibration(store)
    if not report.empty:
        lines.append("    proxy calibration (weighted to the whole training set): " + "; ".join(
            f"{r.proxy} Spearman {r.spearman:+.2f} [{r.spearman_low:+.2f}, {r.spearman_high:+.2f}], top-{r.top_k} "
            f"overlap {_percent(r.top_k_overlap)}" for r in report.itertuples()))
    return lines


def _percent(value: float | None) -> str:
    """0.83 -> '83%'; '–' when unknown."""
    return "–" if value is None or pd.isna(value) else f"{value:.0%}"


def memorization_run(store: Store) -> dict | None:
    """The memorization run behind `scores.mem`: method, shadow models, points scored, memorized count and
    threshold; None when no memorization run has written scores yet."""
    # The audit's run (its first design) when the stage recorded an estimate, else the only run behind the scores.
    first = ("coalesce((SELECT min(run_id) FROM memorization_estimates), min(mem_run_id))"
             if "memorization_estimates" in store.tables() else "min(mem_run_id)")
    frame = store.query(
        f"WITH m AS (SELECT {first} AS run_id, min(mem_method) AS method, count(mem) AS n_scored "
        "           FROM scores HAVING min(mem_run_id) IS NOT NULL) "
        "SELECT m.run_id, coalesce(d.method, m.method) AS method, m.n_scored, d.design_id, d.n_models, d.n_points, "
        "       d.n_candidates, d.fraction, "
        "       (SELECT count(*) FROM shadow_models sm WHERE sm.design_id = d.design_id) AS n_trained, "
        "       (SELECT avg(sm.test_acc) FROM shadow_models sm WHERE sm.design_id = d.design_id) AS shadow_test_acc, "
        "       (SELECT count(DISTINCT sample_id) FROM flags WHERE kind = 'memorized') AS n_memorized, "
        "       TRY_CAST(r.config_json->>'$.memorization.threshold' AS DOUBLE) AS threshold, "
        "       r.status, r.finished_at, r.seconds "
        "FROM m LEFT JOIN runs r ON r.run_id = m.run_id LEFT JOIN shadow_designs d ON d.run_id = m.run_id "
        "ORDER BY d.created_at DESC NULLS LAST LIMIT 1")
    return None if frame.empty else {k: None if pd.isna(v) else v for k, v in frame.iloc[0].items()}


def mem_histogram(store: Store, bins: int = 20) -> pd.DataFrame:
    """mem of the scored points counted in `bins` equal bins over [-1, 1] (columns start, end, n)."""
    return store.query(
        "SELECT -1 + b * 2 / ? AS start, -1 + (b + 1) * 2 / ? AS end, count(*) AS n "
        "FROM (SELECT greatest(least(floor((mem + 1) / 2 * ?), ? - 1), 0)::DOUBLE AS b FROM scores "
        "      WHERE mem IS NOT NULL) "
        "GROUP BY b ORDER BY b", [bins, bins, bins, bins])


def mem_scatter(store: Store, limit: int = 5000) -> pd.DataFrame:
    """ApB and mem (with its interval) of up to `limit` scored points, memorized ones first, then a fixed
    pseudo-random sample (sample_id, label, apb, mem, mem_low, mem_high, interval, mem_n_in, mem_n_out, flag)."""
    return store.query(
        "SELECT sc.sample_id, s.label, sc.apb, sc.mem, sc.mem_low, sc.mem_high, "
        "       printf('[%.2f, %.2f]', sc.mem_low, sc.mem_high) AS interval, sc.mem_n_in, sc.mem_n_out, "
        "       CASE WHEN m.sample_id IS NULL THEN 'not flagged' ELSE 'memorized' END AS flag "
        "FROM scores sc JOIN samples s USING (sample_id) "
        "LEFT JOIN (SELECT DISTINCT sample_id FROM flags WHERE kind = 'memorized') m USING (sample_id) "
        "WHERE sc.mem IS NOT NULL "
        "ORDER BY m.sample_id IS NULL, hash(sc.sample_id), sc.sample_id LIMIT ?", [limit])
