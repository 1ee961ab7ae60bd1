"""What a job will do, said before the dashboard starts it: its steps, the models it will train (planned by the
stages' own planners) and a time estimate from the throughput measured on the same database.

The stages are imported only when a plan is asked for, so the dashboard's pages load without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from auditor import experiment_queries
from auditor.config import load_config
from auditor.store import Store
from pipelines.stage_names import STAGES, parse_arms

NO_ESTIMATE = "no earlier run to estimate from"
# Stages that change what the memorization stage plans from (the training points, their ApB candidates).
BEFORE_MEMORIZATION = ("ingest", "train", "scores")


@dataclass(frozen=True)
class JobPlan:
    """One line per step, the models planned ahead (None when none can be) and the estimated seconds (None when
    nothing was measured on this database to estimate from)."""

    steps: tuple[str, ...]
    models: int | None
    seconds: float | None

    def estimate(self) -> str:
        """The time estimate as words: '~12.5 min', or why there is none."""
        if self.seconds is None:
            return NO_ESTIMATE if self.models else "not estimated (no models planned ahead)"
        return f"~{self.seconds / 60:.1f} min" if self.seconds >= 90 else f"~{self.seconds:.0f} s"


def plan_run(db: str | Path, stages: Sequence[str], *, profile: str | None = None,
             config: Path | None = None) -> JobPlan:
    """The plan of `memaudit run --stages STAGES` on `db`: the memorization stage's first design as that stage plans
    it on the database now, its time at the seconds per shadow model measured there."""
    from pipelines.memorization_stage import first_plan  # torch: only when asked

    ordered = [s for s in STAGES if s in stages]
    cfg = load_config(config, profile)
    store = Store(Path(db).resolve())
    steps, models, seconds = [], None, None
    for stage in ordered:
        if stage != "memorization":
            steps.append(stage)
            continue
        try:
            if not store.path.exists():
                raise RuntimeError(f"{store.path} does not exist yet")
            plan = first_plan(store, cfg)
        except (RuntimeError, ValueError) as exc:
            steps.append(f"memorization: planned once the earlier stages have run ({exc})")
            continue
        earlier = [s for s in ordered if s in BEFORE_MEMORIZATION]
        caveat = (f"; planned on the database as it is now, which the {', '.join(earlier)} stage(s) of this job "
                  "change" if earlier else "")
        later = ("; a phase 2 over more ApB bands may follow, sized by phase 1's audit"
                 if cfg.memorization.method != "ploo" else "")
        steps.append(f"memorization {plan.describe(timed=False)}{later}{caveat}")
        models = plan.n_models
        seconds = None if plan.seconds_per_model is None else plan.n_models * plan.seconds_per_model
    return JobPlan(tuple(steps), models, seconds)


def plan_experiment(db: str | Path, arms: Sequence[str], *, models: int, profile: str | None = None) -> JobPlan:
    """The plan of `memaudit experiment` on `db`: every arm it trains (the full arm, its 2x-schedule twin, each
    non-empty arm and its random control) times `models`, timed at the median seconds per model of the earlier
    experiments on `db` (1x-schedule arms; a 2x arm counts twice). ValueError when the arms resolve to nothing to remove."""
    from pipelines.experiment_stage import ExperimentSpec, planned_arms  # torch: only when asked

    load_config(None, profile)
    store = Store(Path(db).resolve())
    trained = planned_arms(store, ExperimentSpec(parse_arms(",".join(arms)), models))
    removed = {a.name: len(a.ids) for a in trained}
    steps = tuple(f"{a.name}: {models} models without {removed[a.control_of or a.name]} points ({a.source})"
                  for a in trained)
    per_model = experiment_queries.seconds_per_model(store)
    seconds = None if per_model is None else per_model * models * sum(a.schedule for a in trained)
    return JobPlan(steps, len(trained) * models, seconds)
