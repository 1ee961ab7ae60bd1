"""Like-for-like label-issue rows on held-out flip seeds: memaudit's confident learning alone against cleanlab's
`find_label_issues` on the same out-of-sample probabilities, and memaudit's combination (confident learning + kNN
disagreement on the embeddings) against cleanlab's Datalab given the same embeddings and probabilities.

For each seed (101-103: never used to set anything) 5% of the default dataset's training labels move to another
digit (benchmarks/detectors.plant_flips); the audit's K-fold out-of-sample probabilities are computed on the flipped
labels (pipelines.detectors_stage.out_of_sample_probs) and the embedder's vectors are read from the same store.
Precision, recall and F1 are pooled over seeds: Jeffreys 95% intervals for precision and recall, a bootstrap over
training points (resampled within each seed) for F1. Benchmark-only dependency: pip install 'memaudit[bench]'.

Usage: python benchmarks/label_parity.py [--seeds 101 102 103] [--profile standard] [--kfold 5]
(a profile must embed with a pretrained embedder: the quick profile's audit-model embedder needs a training run that
this benchmark does not make; fewer folds are faster: --kfold 2)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from detectors import default_frame, plant_flips
from report import table

from auditor.intervals import jeffreys_interval
from auditor.config import AuditConfig, load_config
from auditor.detectors.label_issues import confident_learning, knn_label_disagreement, label_issue_flags
from auditor.detectors.neighbors import knn
from auditor.store.database import Store
from pipelines.detectors_stage import out_of_sample_probs
from pipelines.embeddings_stage import load_embeddings
from pipelines.progress import silent
from pipelines.runner import run_pipeline


def pooled_prf(found: list[np.ndarray], truth: list[np.ndarray], resamples: int = 2000,
               seed: int = 0) -> dict[str, float]:
    """Precision, recall and F1 of boolean flags against boolean truth, pooled over seeds (one array pair each):
    Jeffreys 95% intervals for precision and recall, a bootstrap over points within each seed for F1."""
    cells = np.array([[np.sum(f & t), np.sum(f & ~t), np.sum(~f & t), np.sum(~f & ~t)]
                      for f, t in zip(found, truth)])  # tp, fp, fn, tn per seed
    tp, fp, fn, _ = cells.sum(axis=0)
    rng = np.random.default_rng(seed)
    boot = sum(rng.multinomial(c.sum(), c / c.sum(), size=resamples) for c in cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_boot = 2 * boot[:, 0] / (2 * boot[:, 0] + boot[:, 1] + boot[:, 2])
    p_low, p_high = jeffreys_interval(tp, tp + fp)
    r_low, r_high = jeffreys_interval(tp, tp + fn)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"flagged": int(tp + fp), "planted": int(tp + fn), "hits": int(tp),
            "precision": tp / (tp + fp) if tp + fp else float("nan"), "precision_low": float(p_low),
            "precision_high": float(p_high), "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "recall_low": float(r_low), "recall_high": float(r_high), "f1": f1,
            "f1_low": float(np.nanquantile(f1_boot, 0.025)), "f1_high": float(np.nanquantile(f1_boot, 0.975))}


CL, CLEANLAB = "memaudit confident learning alone", "cleanlab find_label_issues, same probabilities"


def seed_flags(store: Store, manifest: Path, cfg: AuditConfig) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """Ingest one planted manifest; every method's boolean flags over the training rows (sample-id order), and the
    embedder whose vectors the kNN and Datalab rows used."""
    from cleanlab import Datalab
    from cleanlab.filter import find_label_issues

    run_pipeline(store, str(manifest), cfg, stages=("ingest", "embeddings"))
    train = store.query("SELECT sample_id, label_index FROM samples WHERE split = 'train' ORDER BY sample_id")
    ids, y = train["sample_id"].to_numpy(), train["label_index"].to_numpy()
    n_classes = int(store.scalar("SELECT count(*) FROM classes"))
    probs, _ = out_of_sample_probs(store, cfg, silent)
    embedder = store.scalar("SELECT embedder_id FROM embedders ORDER BY created_at DESC LIMIT 1")
    x = load_embeddings(store, embedder, ids)
    dc = cfg.detectors
    cl = confident_learning(probs, y)
    graph = knn(x, dc.k, exact_below=dc.exact_below, index=dc.index)
    combined = label_issue_flags(cl, knn_label_disagreement(graph, y, n_classes), ids)
    flags = {CL: cl.set_index("index")["is_issue"].reindex(np.arange(len(y)), fill_value=False).to_numpy(bool),
             CLEANLAB: find_label_issues(y, probs),
             "memaudit combined (CL + kNN on embeddings)": np.isin(ids, combined["sample_id"].to_numpy())}
    for name, given in (("cleanlab Datalab label, same embeddings + probabilities", {"pred_probs": probs}),
                        ("cleanlab Datalab label, same embeddings only", {})):
        lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
        lab.find_issues(features=x, issue_types={"label": {}}, **given)
        flags[name] = lab.get_issues("label")["is_label_issue"].to_numpy(bool)
    return ids, flags, embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--kfold", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config(profile=args.profile, overrides={"data": {"allow_outside_root": True},  # absolute paths
                                                       "detectors": {"kfold": args.kfold}})
    t0 = time.perf_counter()
    found: dict[str, list[np.ndarray]] = {}
    truth, per_seed, embedder = [], [], ""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "parity.duckdb")  # one store: re-ingesting keeps the embeddings (same images)
        for seed in args.seeds:
            frame = default_frame()
            flipped = set(frame.loc[plant_flips(frame, np.random.default_rng(seed)), "sample_id"])
            manifest = Path(tmp) / f"flips-{seed}.csv"
            frame.to_csv(manifest, index=False)
            ids, flags, embedder = seed_flags(store, manifest, cfg)
            truth.append(np.isin(ids, list(flipped)))
            for name, mask in flags.items():
                found.setdefault(name, []).append(mask)
            cl, clean = flags[CL], flags[CLEANLAB]
            per_seed.append([seed, int(truth[-1].sum()), int(cl.sum()), int(clean.sum()), int((cl & clean).sum()),
                             *(f"{pooled_prf([m], [truth[-1]])['f1']:.3f}" for m in flags.values())])
    rows = []
    for name, masks in found.items():
        s = pooled_prf(masks, truth)
        rows.append([name, s["flagged"], s["planted"], s["hits"], *(f"{s[m]:.3f} [{s[m + '_low']:.3f}, "
                                                                    f"{s[m + '_high']:.3f}]"
                                                                    for m in ("precision", "recall", "f1"))])
    title = (f"label issues, {len(args.seeds)} held-out flip seeds {args.seeds} pooled (profile {args.profile}, "
             f"{args.kfold}-fold probabilities, embedder {embedder}, {time.perf_counter() - t0:.0f} s)")
    table(title, ["method", "flagged", "planted", "hits", "precision [95%]", "recall [95%]", "F1 [95%]"], rows)
    table("per seed: CL flags vs cleanlab's, and F1 of each method in the order above",
          ["seed", "planted", "memaudit CL", "cleanlab", "both", *(f"F1 {i + 1}" for i in range(len(found)))],
          per_seed)


if __name__ == "__main__":
    main()
