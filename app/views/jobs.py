"""Jobs page: start pipeline stages in the background, follow their progress and logs, and cancel them."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from app.common import md, method_name, run_page
from app.confirm import confirmed, hold
from auditor.store import job_queries
from auditor.store.database import Store
from pipelines import job_plan, launcher
from pipelines.stage_names import STAGES

REFRESH_S = 3
LOG_BYTES = 20_000
PENDING = "jobs_pending"  # the session key of the job awaiting confirmation


def _start(store: Store) -> None:
    """A form for the stages to start; Start shows what the job will do (its steps, the shadow models planned, the
    time) and only Confirm starts it in the background, returning at once with its id."""
    with st.form("start"):
        st.markdown("**Start stages in the background**")
        stages = st.multiselect("Stages", STAGES, help="They run in pipeline order; `scores` needs `train` in the "
                                                      "same job, later stages read what earlier jobs stored.")
        left, right = st.columns(2)
        data = left.text_input("Data (ingest only)", placeholder="empty: the source of the last ingest",
                               help="'default' (embedded MNIST subset), an ImageFolder folder, or a "
                                    ".csv/.parquet/.jsonl manifest, as a path on the machine running the dashboard.")
        profile = right.text_input("Profile", placeholder="standard", help="quick | standard (see [profiles] in "
                                                                           "the config)")
        outside = st.checkbox("Read files outside the dataset root (ingest)", help="Sets data.allow_outside_root = "
                              "true for this job: needed to audit an exported manifest again, which names the audited "
                              "files by absolute path. Off, such paths become `outside_root` problems.")
        submitted = st.form_submit_button("Start", type="primary")
    if submitted and not stages:
        st.warning("Choose at least one stage to start.")
    elif submitted:
        request = {"stages": [s for s in STAGES if s in stages], "data": data.strip() or None,
                   "profile": profile.strip() or None, "allow_outside_root": outside}
        try:
            hold(PENDING, request, job_plan.plan_run(store.path, request["stages"], profile=request["profile"]))
        except (ValueError, OSError) as exc:
            st.error(f"Could not plan the job: {exc}")
            return
    request = confirmed(PENDING)
    if request is None:
        return
    try:
        job_id = launcher.launch(store.path, request["stages"], data=request["data"], profile=request["profile"],
                                 allow_outside_root=request["allow_outside_root"])
    except (ValueError, OSError) as exc:
        st.error(f"Could not start the job: {exc}")
        return
    st.success(f"Started job `{job_id}` ({', '.join(request['stages'])}); it runs in the background and shows "
               "below.")


def _jobs(store: Store) -> None:
    """The jobs, refreshed every few seconds while one is running; the whole page reruns when the last one ends."""
    st.subheader("Jobs")
    running = not job_queries.running_jobs(store).empty
    st.fragment(_job_list, run_every=REFRESH_S if running else None)(store, running)


def _job_list(store: Store, was_running: bool) -> None:
    """A progress bar and a Cancel button per running job, a table of the recent jobs, and the log of one."""
    launcher.refresh(store)
    frame = job_queries.jobs(store)
    if was_running and not frame["status"].eq("running").any():
        st.rerun()  # the last job ended: stop refreshing
    if frame.empty:
        st.info("No jobs yet: start stages above (or with `memaudit run` in a terminal).")
        return
    frame = frame.assign(done=frame["done"].fillna(0).astype(int), total=frame["total"].fillna(0).astype(int),
                         unit=frame["unit"].fillna(""))
    clock = datetime.now(UTC).replace(tzinfo=None)
    for job in frame[frame["status"] == "running"].itertuples():
        done, total = job.done, job.total
        age = "" if pd.isna(job.updated_at) else \
            f", last update {_duration((clock - job.updated_at).total_seconds())} ago"
        message = "" if pd.isna(job.message) else f" – {md(job.message)}"
        bar, button = st.columns([8, 1], vertical_alignment="bottom")
        bar.progress(min(done / total, 1.0) if total else 0.0,
                     text=f"{method_name(job.kind)} `{job.job_id}`: {done:,} of {total:,} {job.unit}, "
                          f"ETA {_duration(job.eta_s)}{age}{message}")
        if not pd.isna(job.pid) and button.button("Cancel", key=f"cancel-{job.job_id}"):
            launcher.cancel(store, job.job_id)
            st.rerun()
    table = pd.DataFrame({
        "job": frame["job_id"], "kind": frame["kind"].map(method_name), "status": frame["status"],
        "done / total": [f"{d:,} / {t:,} {u}".strip() for d, t, u in zip(frame["done"], frame["total"], frame["unit"])],
        "ETA": [_duration(e) if s == "running" else "–" for e, s in zip(frame["eta_s"], frame["status"])],
        "started (UTC)": frame["started_at"], "updated (UTC)": frame["updated_at"], "message": frame["message"],
        "run": frame["run_id"]})
    when = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"started (UTC)": when, "updated (UTC)": when})
    _log(store, frame)


def _log(store: Store, frame: pd.DataFrame) -> None:
    """The command and the tail of the log of one job started from this page."""
    logged = frame[frame["log_path"].notna()].set_index("job_id")
    if logged.empty:
        return
    with st.expander("Log of a job started here"):
        job_id = st.selectbox("Job", logged.index, key="log_job",
                              format_func=lambda j: f"{j} ({logged.loc[j, 'status']})")
        st.caption(f"`{logged.loc[job_id, 'command']}`")
        try:
            text = launcher.read_log(store, logged.loc[job_id, "log_path"], LOG_BYTES)
        except ValueError as exc:
            st.error(str(exc))
            return
        st.code(text or "(nothing logged yet)", language=None)


def _duration(seconds: float | None) -> str:
    """`seconds` as '45 s', '12 min' or '3.5 h'; '–' when unknown."""
    if seconds is None or pd.isna(seconds):
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(store: Store) -> None:
    """The start form, then the jobs."""
    _start(store)
    _jobs(store)


run_page("Jobs", render)
