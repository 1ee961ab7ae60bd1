"""The `memaudit` command: run the pipeline, open the dashboard, report status."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from auditor.config import ConfigError, load_config
from auditor.review.export import ExportSummary, export_manifest
from auditor.data.manifest import ManifestError
from auditor.status_report import status_text
from auditor.store.database import Store, StoreBusy
from auditor.store.write_errors import explain_write_failure
from auditor.experiments.sweep import METHODS, SweepSpec
from pipelines.launcher import tracked
from pipelines.progress import terminal
from pipelines.stage_names import DEFAULT_ARMS, DEFAULT_STAGES, STAGES, parse_arms
from pipelines.writer_lock import writer_lock

APP_ENTRY = Path(__file__).resolve().parent.parent / "app" / "main.py"
# How long `memaudit app` waits for streamlit to stop after forwarding it a signal before killing it.
APP_STOP_GRACE_S = 10.0
# Errors whose message already names the cause and the fix: printed as they are (exit 2), never as a traceback.
CLEAR_ERRORS = (ConfigError, ManifestError, StoreBusy, FileNotFoundError, ValueError, RuntimeError)


def _executor_overrides(args: argparse.Namespace) -> dict | None:
    """Config overrides from --executor / --ray-address (None when neither is given: the config file decides)."""
    chosen = {key: value for key, value in (("kind", args.executor), ("address", args.ray_address)) if value}
    if args.ray_address and not args.executor:
        chosen["kind"] = "ray"
    return {"executor": chosen} if chosen else None


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.runner import format_summary, run_pipeline  # the training stack, only for commands that train

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    store = Store(args.db)
    command = f"memaudit run --data {args.data} --stages {args.stages}"
    command += f" --job-id {args.job_id}" if args.job_id else ""
    with tracked(store, args.job_id, len(stages)) as progress, writer_lock(store.path, command):
        cfg = load_config(args.config, args.profile, _executor_overrides(args))
        reports = run_pipeline(store, args.data, cfg, stages=stages, progress=progress)
    print(format_summary(reports))
    print(f"\nresults in {args.db}; open them with: memaudit app --db {args.db}")
    return 0


def app_command(db: str | Path, host: str, port: int) -> list[str]:
    """The streamlit command line that serves the dashboard for `db` (bound to loopback by default)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP_ENTRY), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer",  # no "Deploy" menu: this dashboard is not deployed to a cloud
            "--", "--db", str(Path(db).resolve())]


def _cmd_app(args: argparse.Namespace) -> int:
    if Path(args.db).is_dir():
        raise ValueError(f"{args.db} is a folder, not an audit database; give the .duckdb file "
                         f"(`memaudit app --db {Path(args.db) / 'audit.duckdb'}`, say)")
    if not Path(args.db).exists():
        raise FileNotFoundError(f"{args.db} does not exist; create it first with `memaudit run --db {args.db}`")
    print(f"memaudit dashboard: http://{args.host}:{args.port}  (Ctrl+C to stop)", flush=True)
    env = dict(os.environ, MEMAUDIT_DB=str(Path(args.db).resolve()))
    return _serve(app_command(args.db, args.host, args.port), env)


def _serve(argv: list[str], env: dict[str, str]) -> int:
    """Run `argv` (streamlit) until it exits, forwarding SIGTERM and SIGINT to it (and SIGKILL when it outlives one
    by APP_STOP_GRACE_S), so that stopping this process stops the dashboard; its status (128 + N after signal N)."""
    proc = subprocess.Popen(argv, env=env)
    kill_at: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        kill_at.append(time.monotonic() + APP_STOP_GRACE_S)
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while (code := proc.poll()) is None:
            if kill_at and time.monotonic() > kill_at[0]:
                proc.kill()
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _cmd_status(args: argparse.Namespace) -> int:
    print(status_text(Store(args.db)))
    return 0


def export_text(summary: ExportSummary) -> str:
    """The export summary the `export` command prints."""
    dropped = ", ".join(f"{kind} {n}" for kind, n in summary.dropped_by_kind.items()) or "none"
    return (f"exported {summary.rows_out} of {summary.rows_in} rows to {summary.path}\n"
            f"  removed {summary.removed}, relabeled {summary.relabeled}, dropped unreviewed: {dropped}\n"
            f"  changelog: {summary.changelog}")


def _cmd_export(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.drop_kinds.split(",") if k.strip()]
    summary = export_manifest(Store(args.db), Path(args.out), fmt=args.format,
                              apply_relabels=not args.no_relabels, drop_removed=not args.keep_removed,
                              drop_kinds=kinds, overwrite=args.force)
    print(export_text(summary))
    return 0


def _split(text: str | None, option: str, kind: type = str) -> list | None:
    """A comma-separated option as a list of `kind` (None when not given)."""
    if text is None:
        return None
    try:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated {kind.__name__} values, got {text!r}") from None


def _existing(db: str, first: str) -> Store:
    """The Store of an audit database that must already exist (`first`: the command that creates what is needed)."""
    store = Store(db)
    if not store.path.exists():
        raise FileNotFoundError(f"{db} does not exist; {first} first with `memaudit run --db {db}"
                                + (" --stages ingest`" if first.startswith("ingest") else "`"))
    return store


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep_stage import run_sweep, sweep_text

    store = Store(args.db)
    if not args.show:
        store = _existing(args.db, "ingest a dataset")
        overrides = None if args.apb_cutoff is None else {"candidates": {"apb_cutoff": args.apb_cutoff}}
        cfg = load_config(args.config, args.profile, overrides)
        spec = SweepSpec.grid(_split(args.archs, "--archs") or [cfg.train.arch],
                              _split(args.widths, "--widths", int) or [cfg.train.width],
                              _split(args.epochs, "--epochs", int) or [cfg.train.epochs], args.method)
        with writer_lock(store.path, f"memaudit sweep --method {args.method}"):
            args.show = run_sweep(store, spec, cfg, terminal).facts["sweep_id"]
    print(sweep_text(store, args.show))
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from pipelines.experiment_stage import ExperimentSpec, experiment_text, run_experiment

    store = Store(args.db)
    if not args.show:
        store = _existing(args.db, "audit a dataset")
        cfg = load_config(args.config, args.profile, _executor_overrides(args))
        spec = ExperimentSpec(parse_arms(args.arms), args.models, cfg.seed, args.small_cluster_size, args.reaudit)
        command = f"memaudit experiment --arms {args.arms}" + (f" --job-id {args.job_id}" if args.job_id else "")
        with tracked(store, args.job_id, 1) as progress, writer_lock(store.path, command):
            args.show = run_experiment(store, spec, cfg, progress).facts["experiment_id"]
    print(experiment_text(store, args.show))
    return 0


def _executor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("local", "ray"),
                        help="where shadow, LOO and experiment models train (default: the config's [executor])")
    parser.add_argument("--ray-address", help="an existing Ray cluster (HOST:6379, ray://HOST:10001 or auto); "
                                              "implies --executor ray. Without it, ray starts a local cluster")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memaudit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="ingest a dataset, train with dynamics, score and flag")
    run.add_argument("--data", default="default",
                     help="'default' (embedded MNIST subset), an ImageFolder folder, or a .csv/.parquet/.jsonl manifest")
    run.add_argument("--db", required=True, help="the audit DuckDB file (created when missing)")
    run.add_argument("--config", help="TOML file merged over the defaults (assets/default.toml)")
    run.add_argument("--profile", default="standard", help="quick | standard (see [profiles] in the config)")
    run.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                     help=f"comma-separated subset of: {', '.join(STAGES)} (default: {','.join(DEFAULT_STAGES)})")
    run.add_argument("--job-id", help=argparse.SUPPRESS)  # set by the dashboard's launcher: the jobs row to end
    _executor_options(run)
    run.set_defaults(func=_cmd_run)
    app = sub.add_parser("app", help="open the dashboard on an audit database")
    app.add_argument("--db", required=True)
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=int, default=8501)
    app.set_defaults(func=_cmd_app)
    status = sub.add_parser("status", help="print what has been computed, with which config")
    status.add_argument("--db", required=True)
    status.set_defaults(func=_cmd_status)
    export = sub.add_parser("export", help="write the cleaned manifest: review decisions applied, with a changelog")
    export.add_argument("--db", required=True)
    export.add_argument("--out", required=True, help="the manifest to write (.csv, .parquet or .jsonl)")
    export.add_argument("--format", choices=("csv", "parquet", "jsonl"), help="default: from the suffix of --out")
    export.add_argument("--drop-kinds", default="",
                        help="comma-separated flag kinds whose unreviewed samples are dropped too (e.g. leaked)")
    export.add_argument("--no-relabels", action="store_true", help="keep the original labels of relabeled samples")
    export.add_argument("--keep-removed", action="store_true", help="keep the samples decided 'remove'")
    export.add_argument("--force", action="store_true",
                        help="overwrite an existing manifest or changelog at --out (default: refuse)")
    export.set_defaults(func=_cmd_export)
    sweep = sub.add_parser("sweep", help="natural-memorization sweep: the audit per architecture, width and epochs")
    sweep.add_argument("--db", required=True, help="an audit database with an ingested dataset")
    sweep.add_argument("--archs", help="comma-separated architectures (default: the config's)")
    sweep.add_argument("--widths", help="comma-separated widths, config units (default: the config's)")
    sweep.add_argument("--epochs", help="comma-separated training lengths (default: the config's)")
    sweep.add_argument("--method", choices=METHODS, default="apb",
                       help="apb: a cheap proxy, memorized = lowest-ApB rule (not memorization); ploo_improved: mem "
                            "of each variant's ApB candidates; ploo: mem of every point from plain pLOO, the gap over "
                            ">= 3 seeds, a 2x-schedule check and checkpoints within one run")
    sweep.add_argument("--apb-cutoff", type=float,
                       help="memorized candidates = ApB below this (the default fraction rule fixes their count)")
    sweep.add_argument("--config", help="TOML file merged over the defaults")
    sweep.add_argument("--profile", default="standard", help="quick | standard")
    sweep.add_argument("--show", metavar="SWEEP_ID", help="print a stored sweep instead of running one")
    sweep.set_defaults(func=_cmd_sweep)
    experiment = sub.add_parser("experiment", help="retrain without chosen points (memorized, leaked, ...) and "
                                                   "measure the test-accuracy drop against full-data models")
    experiment.add_argument("--db", required=True, help="an audited database (memorization and detectors stages)")
    experiment.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                            help="comma-separated: memorized, leakage, subpopulation, memorized_remainder, decisions, "
                                 "flag:<kind>, ids:<file> (the full-data arm and random controls are added)")
    experiment.add_argument("--models", type=int, default=20, help="models per arm (default 20)")
    experiment.add_argument("--small-cluster-size", type=int, default=3,
                            help="memorized points in clusters up to this size count as a sub-population")
    experiment.add_argument("--reaudit", action="store_true",
                            help="also re-run ApB on each reduced set and count the newly flagged candidates")
    experiment.add_argument("--config", help="TOML file merged over the defaults (the training recipe)")
    experiment.add_argument("--profile", default="standard", help="quick | standard")
    experiment.add_argument("--show", metavar="EXPERIMENT_ID", help="print a stored experiment instead of running one")
    experiment.add_argument("--job-id", help=argparse.SUPPRESS)  # set by the dashboard's launcher
    _executor_options(experiment)
    experiment.set_defaults(func=_cmd_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # a full disk or read-only folder, whoever noticed it (DuckDB, torch, the OS)
        reason = explain_write_failure(exc, getattr(args, "db", None) or ".")
        if reason is None and not isinstance(exc, CLEAR_ERRORS):
            raise
        print(f"memaudit: error: {reason or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memaudit: interrupted; re-run the same command to resume (finished seeds are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
