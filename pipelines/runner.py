"""Run the stages in order and summarise what was computed."""

from __future__ import annotations

from auditor.config import AuditConfig
from auditor.store.database import Store
from pipelines.detectors_stage import detectors_stage
from pipelines.embeddings_stage import embeddings_stage
from pipelines.memorization_stage import loo_stage, memorization_stage
from pipelines.progress import ProgressFactory, silent
from pipelines.stage_names import DEFAULT_STAGES, STAGES
from pipelines.stages import StageReport, ingest_stage, scores_stage, train_stage


def run_pipeline(store: Store, data: str | None, cfg: AuditConfig, *, stages: tuple[str, ...] = DEFAULT_STAGES,
                 progress: ProgressFactory = silent) -> list[StageReport]:
    """Ingest -> train with dynamics -> scores and flags -> memorization (shadow models) -> embeddings ->
    detectors -> exact LOO.

    `scores` needs `train` in the same call; `memorization` and `loo` read what earlier calls stored."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(sorted(unknown))}; use: {', '.join(STAGES)}")
    if "scores" in stages and "train" not in stages:
        raise ValueError("the scores stage reads the training runs of the same call; use --stages train,scores")
    reports = []
    if "ingest" in stages:
        if data is None:
            raise ValueError("the ingest stage needs --data (default, a folder or a manifest)")
        reports.append(ingest_stage(store, data, cfg, progress))
    if "train" in stages:
        store.init()
        train = train_stage(store, cfg, progress)
        reports.append(train)
        if "scores" in stages:
            reports.append(scores_stage(store, cfg, train))
    if "memorization" in stages:
        reports.append(memorization_stage(store, cfg, progress))
    if "embeddings" in stages:
        reports.append(embeddings_stage(store, cfg, progress))
    if "detectors" in stages:
        reports.append(detectors_stage(store, cfg, progress))
    if "loo" in stages:
        reports.append(loo_stage(store, cfg, progress))
    return reports


def memorization_lines(f: dict) -> list[str]:
    """The memorization stage's summary: what was scored, the three states, the estimated total and the recall."""
    scored = (f"{f['scored']} points scored ({f['candidates']} ApB shortlist, {f['audit']} random audit, "
              f"{f['extension']} from {f['bands_extended']} extended ApB bands)" if f["candidates"]
              else f"{f['scored']} points scored (every training point)")
    capped = (f"      capped by memorization.max_models: {f['models']} of the {f['models_wanted']} models the target "
              f"half-width and floors asked for, so the intervals are wider and more points stay uncertain"
              if f["models_wanted"] > f["models"] else None)
    return [f"      {f['method']}: {f['models']} shadow models ({f['reused']} reused, mean test acc "
            f"{f['shadow_test_acc']:.2%}); {scored}, {f['not_scored']} not scored", *([capped] if capped else []),
            f"      memorized {f['memorized']} ({f['memorized_certain']} with the whole interval above the threshold), "
            f"uncertain {f['uncertain']}, not memorized {f['not_memorized']}",
            f"      estimated memorized in the whole training set: {f['est_total']:.0f} "
            f"(95% interval {f['est_low']:.0f} to {f['est_high']:.0f}); recall of the flags {f['recall']:.0%} "
            f"({f['recall_low']:.0%} to {f['recall_high']:.0%})",
            f"      influence: {f['influence_pairs']} pairs kept of {f['influence_tested']:,} tested "
            f"(Benjamini-Hochberg, FDR {f['influence_q']:g})" + (f"; {f['influence_note']}" if f["influence_note"]
                                                                 else "")]


def format_summary(reports: list[StageReport]) -> str:
    """Human summary of a pipeline call: one block per stage with its key facts and time."""
    lines = ["", "memaudit summary"]
    for report in reports:
        lines.append(f"  {report.stage:<7} {report.seconds:7.1f}s")
        f = report.facts
        if report.stage == "ingest":
            splits = ", ".join(f"{k} {v}" for k, v in sorted(f["splits"].items()))
            lines.append(f"      {f['samples']} images ({splits}), {f['classes']} classes from {f['source']}")
            if f["problems"]:
                shown = ", ".join(f"{k} {v}" for k, v in sorted(f["problems"].items()))
                lines.append(f"      problems: {sum(f['problems'].values())} ({shown}) - see `problems` table")
            else:
                lines.append("      problems: none")
        elif report.stage == "train":
            accs = ", ".join(f"{a:.2%}/{t:.2%}" for a, t in zip(f["train_acc"], f["test_acc"]))
            lines.append(f"      {f['seeds']} seed(s) on {f['device']} ({f['reused_seeds']} reused), "
                         f"train/test acc {accs}")
            lines.append(f"      converged: {'yes' if f['converged'] else 'NO - scores are from an unconverged model'}")
        elif report.stage == "scores":
            lines.append(f"      {f['scored']} training points scored (median ApB {f['apb_median']:.3f}); "
                         f"{f['memorized_candidates']} memorized candidates, {f['unreadable']} unreadable")
        elif report.stage == "memorization":
            lines.extend(memorization_lines(f))
        elif report.stage == "embeddings":
            fallback = f" - {f['fallback']}" if f["fallback"] else ""
            lines.append(f"      {f['embedder']} ({f['dim']}-d): {f['embedded']} embedded now, {f['total']} in all"
                         f"{fallback}")
        elif report.stage == "detectors":
            flags = ", ".join(f"{k} {v}" for k, v in sorted(f["flags"].items())) or "none"
            lines.append(f"      flags: {flags}; {f['subpopulations']} sub-populations")
            cuts = ", ".join(f"{k.removesuffix('_threshold')} {v}" for k, v in f.items() if k.endswith("_threshold"))
            lines.append(f"      thresholds: {cuts}; label issues from {f['probabilities']} probabilities; "
                         f"graph {f['graph']}")
        elif report.stage == "loo":
            lines.append(f"      exact LOO for {f['points']} points: {f['models']} models ({f['reused']} reused)")
    return "\n".join(lines)
