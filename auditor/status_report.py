"""What `memaudit status` prints: the rows of each table, the splits, every run with its config, the flags, the
experiments and sweeps, and the memorization estimate."""

from __future__ import annotations

import json

from auditor.memorization import memorization_queries
from auditor.store.database import Store


def status_text(store: Store) -> str:
    """What has been computed in `store`, and with which config."""
    if not store.path.exists():
        return f"{store.path}: no audit database yet"
    lines = [f"{store.path}"]
    with store.connect(read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for table in ("samples", "problems", "runs", "epochs", "dynamics", "predictions", "scores", "flags",
                      "shadow_models", "shadow_predictions", "influence", "loo_scores", "reviews", "experiments",
                      "experiment_models", "sweeps", "sweep_variants"):
            if table in tables:
                lines.append(f"  {table:<18} {con.execute(f'SELECT count(*) FROM {table}').fetchone()[0]:>10,} rows")
        if "samples" in tables:
            splits = con.execute("SELECT split, count(*) FROM samples GROUP BY split ORDER BY split").fetchall()
            lines.append("  splits: " + ", ".join(f"{split} {n}" for split, n in splits))
        if "runs" in tables:
            lines.append("  runs:")
            rows = con.execute("SELECT run_id, kind, seed, status, converged, train_acc, test_acc, config_json,"
                               " code_version FROM runs ORDER BY started_at").fetchall()
            for run_id, kind, seed, status, converged, train_acc, test_acc, config_json, code in rows:
                cfg = json.loads(config_json or "{}")
                train = cfg.get("train", {})
                accs = "" if train_acc is None else f" train {train_acc:.2%} test {test_acc or 0:.2%}"
                conv = "" if converged is None else (" converged" if converged else " NOT converged")
                lines.append(f"    {run_id:<34} {kind:<7} {status:<8} seed={seed} profile={cfg.get('profile')} "
                             f"arch={train.get('arch')} epochs={train.get('epochs')} seeds={train.get('seeds')}"
                             f"{accs}{conv} code={code}")
        if "flags" in tables:
            flags = con.execute("SELECT kind, count(*) FROM flags GROUP BY kind ORDER BY kind").fetchall()
            lines.append("  flags: " + (", ".join(f"{kind} {n}" for kind, n in flags) or "none"))
        for kind, head, parts in (("experiments", "experiments", "experiment_models"),
                                  ("sweeps", "sweeps", "sweep_variants")):
            key = head[:-1] + "_id"
            if {head, parts} <= tables:
                rows = con.execute(f"SELECT h.{key}, h.status, count(p.{key}) FROM {head} h LEFT JOIN {parts} p "
                                   f"USING ({key}) GROUP BY ALL ORDER BY min(h.created_at)").fetchall()
                if rows:
                    unit = "models" if kind == "experiments" else "variants"
                    lines.append(f"  {kind}: " + ", ".join(f"{i} {status} ({n} {unit})" for i, status, n in rows))
    return "\n".join(lines + memorization_queries.estimate_lines(store))
