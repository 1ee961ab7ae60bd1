"""What a job will do, said before the dashboard starts it: its steps, the models it will train (planned by the
stages' own planners) and a time estimate from the throughput measured on the same database.

The stages are imported only when a plan is asked for, so the dashboard's pages load without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from auditor.experiments import experiment_queries
from auditor.config import load_config
from auditor.store.database import Store
from pipelines.stage_names import STAGES, parse_arms

NO_ESTIMATE = "no earlier run to estimate from"
# Stages that change what the memorization stage plans from (the training points, their ApB candidates).
BEFORE_MEMORIZATION = ("ingest", "train", "scores")


@dataclass(frozen=True)
class JobPlan:
    """One line per step, the models planned ahead (None when none can be), up to how many more a later phase may
    train if an earlier one calls for it (an upper bound), and the estimated seconds of both (None when nothing was
    measured on this database to estimate from)."""

    steps: tuple[str, ...]
    models: int | None
    seconds: float | None
    conditional: int = 0

    def estimate(self) -> str:
        """The time estimate as words: '~12.5 min' ('up to ~12.5 min' with conditional models), or why none."""
        if self.seconds is None:
            return NO_ESTIMATE if self.models else "not estimated (no models planned ahead)"
        time = f"~{self.seconds / 60:.1f} min" if self.seconds >= 90 else f"~{self.seconds:.0f} s"
        return f"up to {time}" if self.conditional else time


def plan_run(db: str | Path, stages: Sequence[str], *, profile: str | None = None,
             config: Path | None = None) -> JobPlan:
    """The plan of `memaudit run --stages STAGES` on `db`: the memorization stage's designs as that stage plans them
    on the database now (pLOO-improved's phase 2 at its largest), timed at the seconds per model measured there."""
    from pipelines.memorization_stage import PHASE_2_RULE, plans_ahead  # torch: only when asked

    ordered = [s for s in STAGES if s in stages]
    cfg = load_config(config, profile)
    store = Store(Path(db).resolve())
    steps, models, seconds, conditional = [], None, None, 0
    for stage in ordered:
        if stage != "memorization":
            steps.append(stage)
            continue
        try:
            if not store.path.exists():
                raise RuntimeError(f"{store.path} does not exist yet")
            plan, phase_2 = plans_ahead(store, cfg)
        except (RuntimeError, ValueError) as exc:
            steps.append(f"memorization: planned once the earlier stages have run ({exc})")
            continue
        earlier = [s for s in ordered if s in BEFORE_MEMORIZATION]
        caveat = (f"; planned on the database as it is now, which the {', '.join(earlier)} stage(s) of this job "
                  "change" if earlier else "")
        later = ("" if phase_2 is None else
                 f"; then up to {phase_2.n_models} shadow models more: "
                 f"{PHASE_2_RULE.format(rate_floor=cfg.memorization.rate_floor)}; at most "
                 f"{phase_2.describe(timed=False)}")
        steps.append(f"memorization {plan.describe(timed=False)}{later}{caveat}")
        models, conditional = plan.n_models, 0 if phase_2 is None else phase_2.n_models
        per_model = plan.seconds_per_model
        seconds = None if per_model is None else (models + conditional) * per_model
    return JobPlan(tuple(steps), models, seconds, conditional)


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
