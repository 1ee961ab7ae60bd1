"""What the Overview page and `memaudit status` read about the memorization audit: the estimated total of memorized
images with the recall of the flags, the per-band audit and the proxy-calibration report (no SQL in pages)."""

from __future__ import annotations

import pandas as pd

from auditor.store import Store


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
