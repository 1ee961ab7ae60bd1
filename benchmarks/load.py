"""Load on the dashboard: N concurrent browser sessions review and decide while a background job writes.

`run_load` copies an audited database, serves the dashboard for the copy on 127.0.0.1 (`memaudit app`'s streamlit
command), launches `memaudit run --stages memorization` jobs on it the way the Jobs page does (`pipelines.launcher`;
one after another until the sessions are done, each with one more shadow model, so none is a no-op re-run), and
opens N sessions, each under its own reviewer name (typed in the sidebar): in one headless chromium (`--client
browser`: one browser context each, driven by asyncio Playwright), or speaking streamlit's websocket protocol to the
server without rendering (`--client protocol`, st_client.py: on a small machine, chromium's rendering of N pages
would dominate what is measured). A session loads the Overview (or, with --first-page Review, the Review page,
where it then makes its first grid decision), then makes its decisions in turn, each on an image
of its own (no two decisions, of any sessions, on the same image): the 1st, 3rd, ... on the Review grid (the Review page
filtered to its class, pick the tile, choose keep / remove / relabel, Apply), the 2nd, 4th, ... on the Point detail page
(opened from the tile's Details button), each followed by the Decisions page and the Overview (after a last decision
on the grid, the Decisions page).

A page load is timed from the click (or `goto`) until its title and a known element of its content are shown, its
images are decoded, its charts drawn and streamlit's script run has ended (protocol: until the run has ended with the
title and that element, and the page's images are fetched); a decision from the button press until the
outcome line (stored, or not saved) is shown. `format_table` prints p50/p95/max per page; `verify` then counts the
rows in `reviews` of every decision the UI confirmed: each must be stored exactly once, and nothing else.

Usage: python benchmarks/load.py [--db AUDIT.duckdb] [--sessions 20] [--decisions 2] [--duration 900]
                                [--first-page Overview|Review] [--client browser|protocol] [--no-writer]
                                [--workdir DIR]
(without --db, a small audit of the default dataset is built first, like the tests' `small_db`; a --db audit must have
run the memorization stage).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the dashboard and chromium helpers shared with the browser tests
sys.path.insert(0, str(ROOT / "benchmarks"))
from conftest import CHROMIUM, CHROMIUM_ARGS, IDLE, SMALL_OVERRIDES, dashboard
from st_client import StClient

from auditor.review import queries
from auditor.store import job_queries
from auditor.review.queries import ReviewFilter
from auditor.review.reviews import ACTIONS
from auditor.store.database import Store
from pipelines import launcher

REVIEWER_PREFIX = "load-"
GRID_PAGE = 24  # the Review grid's default page size: a session's images are on the first page of its class
WRITER_STAGES = ("memorization",)
WRITER_MODELS = 16  # shadow models of the first writer job (committed 8 at a time); one more for each next job
# Each page: its title (h1) and an element of its content that only a finished render shows.
PAGES = {"Overview": ("Audit overview", "Embedding map"), "Review": ("Review images", re.compile(r"^\d+ picked$")),
         "Point detail": ("Point detail", "Training dynamics"), "Decisions": ("Decisions", "Images decided")}
FIRST_PAGES = {"Overview": "", "Review": "review"}  # where a session may start, and its URL path
FIRST_LOADS = {name: f"{name} (first load)" for name in FIRST_PAGES}
GRID_DECISION, POINT_DECISION = "decision: Review grid", "decision: Point detail"
ROWS = (*FIRST_LOADS.values(), *PAGES, GRID_DECISION, POINT_DECISION)
# The render is over: no script run, every image decoded, every chart drawn.
RENDERED = (f"{IDLE} && [...document.querySelectorAll(\"[data-testid='stImage'] img\")].every(i => i.complete) && "
            "[...document.querySelectorAll(\"[data-testid='stVegaLiteChart']\")]"
            ".every(c => c.querySelector('canvas, svg'))")
ERROR_TEXT = re.compile(r"Could not read the audit database|Not saved")
OUTCOME_TEXT = re.compile(r"recorded for \d+ image|Not saved|Could not read the audit database")
POLL_MS = 100


@dataclass(frozen=True)
class Plan:
    """What one session does: its reviewer name, the class it filters the grid to, its images (on the first page of
    that class, shared with no other session) and the label its relabels go to."""

    reviewer: str
    label: str
    samples: tuple[str, ...]
    new_label: str


@dataclass(frozen=True)
class Decision:
    """One decision made through the UI and what the UI said of it: 'stored', 'refused' (not saved) or 'unknown'
    (no outcome line in time)."""

    reviewer: str
    sample_id: str
    action: str
    new_label: str | None
    status: str


@dataclass
class Check:
    """The decisions the UI confirmed, against the rows of `reviews` by the sessions' reviewers."""

    confirmed: int = 0
    stored_once: int = 0
    duplicated: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Every confirmed decision stored exactly once, nothing else stored."""
        return self.stored_once == self.confirmed and not (self.duplicated or self.lost or self.unexpected)


@dataclass
class LoadResult:
    """Timings (seconds) per page and decision kind, the decisions, the sessions' errors, their websocket reconnects,
    the writer's work and the database check."""

    sessions: int
    wall_s: float = 0.0
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    decisions: list[Decision] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0
    jobs: dict[str, str] = field(default_factory=dict)
    models_written: int = 0
    check: Check = field(default_factory=Check)

    @property
    def page_loads(self) -> list[float]:
        """Every page load time (decisions excluded)."""
        return [t for row in (*FIRST_LOADS.values(), *PAGES) for t in self.times.get(row, [])]

    @property
    def p95(self) -> float:
        """95th percentile of all page load times (NaN without any)."""
        return _percentile(self.page_loads, 95)


class PageError(RuntimeError):
    """The page showed an exception or a database error instead of its content."""


def _percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation), NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# ------------------------------------------------------------------------------------------- database and writer


def copy_audit(source: Path, folder: Path) -> Path:
    """A private copy of the audit `source` (the file, its WAL if any, its .artifacts folder) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in source.parent.iterdir():
        if item.name.startswith(source.name):
            if item.is_dir():
                shutil.copytree(item, folder / item.name, dirs_exist_ok=True)
            else:
                shutil.copy2(item, folder / item.name)
    return folder / source.name


def build_small_audit(folder: Path) -> Path:
    """The tests' small audit (24 images per class of the default dataset, quick profile) built in `folder`."""
    from auditor.config import load_config
    from auditor.data.default_dataset import materialise_default
    from pipelines.runner import run_pipeline

    path = folder / "audit.duckdb"
    cfg = load_config(profile="quick", overrides=SMALL_OVERRIDES)
    run_pipeline(Store(path), str(materialise_default()), cfg)
    return path


def plan_sessions(store: Store, sessions: int, per_session: int) -> list[Plan]:
    """Sessions round-robin over the classes; the sessions of one class share out the first Review page of that
    class (default order), `per_session` images each, so no two sessions decide on the same image."""
    classes = queries.class_labels(store)
    plans = []
    for i in range(sessions):
        label = classes[i % len(classes)]
        peers = len(range(i % len(classes), sessions, len(classes)))
        page = queries.review_page(store, sort=next(iter(queries.REVIEW_SORTS)), limit=GRID_PAGE, offset=0,
                                   where=ReviewFilter(label=label))["sample_id"].tolist()
        mine = page[i // len(classes)::peers][:per_session]
        if len(mine) < per_session:
            raise ValueError(f"class {label} has {len(page)} images on its first Review page: too few for {peers} "
                             f"sessions of {per_session} decisions; use fewer sessions or decisions")
        plans.append(Plan(f"{REVIEWER_PREFIX}{i + 1:02d}", label, tuple(mine),
                          classes[(i + 1) % len(classes)]))
    return plans


def _writer_config(store: Store, models: int, folder: Path) -> tuple[Path, str]:
    """A TOML config file (and its profile) repeating the audit's last memorization run with `models` shadow models."""
    cfg = json.loads(store.scalar("SELECT config_json FROM runs WHERE kind = 'memorization' "
                                  "ORDER BY started_at DESC LIMIT 1") or "null") or {}
    if not cfg:
        raise ValueError(f"{store.path} has no memorization run to repeat: audit it with the memorization stage")
    profile = cfg.pop("profile", None)
    cfg["memorization"]["models"] = models
    lines = [f"{key} = {json.dumps(value)}" for key, value in cfg.items() if not isinstance(value, dict)]
    for section, values in cfg.items():
        if isinstance(values, dict):
            lines += [f"\n[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    path = folder / f"writer-{models}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, profile


class Writer:
    """Background jobs writing to the audit while the sessions run: `memaudit run --stages memorization` started by
    the dashboard's launcher, one after another until `stop`, which cancels the running one; each next job has one
    more shadow model, so a new shard design to train, not one to reuse. `jobs` maps each job id to its final status."""

    def __init__(self, db: Path, folder: Path, models: int = WRITER_MODELS):
        self.store, self.folder, self.models = Store(db), folder, models
        self.jobs: dict[str, str] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="load-writer", daemon=True)

    def start(self) -> None:
        """Launch the first job (in a thread of this process that waits on each job in turn)."""
        self._thread.start()

    def _loop(self) -> None:
        """Launch, wait, launch the next, until stopped (the running job cancelled) or a job did not end 'done'."""
        try:
            while not self._stop.is_set():
                config, profile = _writer_config(self.store, self.models + len(self.jobs), self.folder)
                job_id = launcher.launch(self.store.path, WRITER_STAGES, profile=profile, config=config)
                self.jobs[job_id] = "running"
                row = job_queries.job(self.store, job_id)
                while launcher.is_alive(row["pid"], row["started_at"]) and not self._stop.wait(0.5):
                    pass
                if self._stop.is_set():
                    launcher.cancel(self.store, job_id)
                elif (job_queries.job(self.store, job_id) or {}).get("status") != "done":
                    return  # a failed job is reported by stop(), not repeated
        except BaseException as exc:  # reported by stop(), which the caller always reaches
            self.error = exc

    def stop(self) -> None:
        """Stop launching, cancel the running job, and read every job's final status."""
        self._stop.set()
        self._thread.join(timeout=120)
        if self.error is not None:
            raise RuntimeError(f"the writer failed: {self.error}") from self.error
        for job_id in self.jobs:
            row = job_queries.job(self.store, job_id) or {"status": "missing"}
            self.jobs[job_id] = row["status"] + (f" ({row['message']})" if row["status"] == "failed" else "")


def verify(store: Store, decisions: list[Decision], reviewers: list[str]) -> Check:
    """Every decision the UI confirmed is in `reviews` exactly once (same reviewer, sample, action, new label), and the
    sessions' reviewers have no other row (a refused decision stored anyway would be one)."""
    rows = store.query("SELECT reviewer, sample_id, action, coalesce(new_label, '') AS new_label, count(*) AS n "
                       "FROM reviews WHERE list_contains(?::VARCHAR[], reviewer) GROUP BY ALL", [reviewers])
    stored = {(r.reviewer, r.sample_id, r.action, r.new_label): int(r.n) for r in rows.itertuples(index=False)}
    check = Check()
    expected = set()
    for d in decisions:
        key = (d.reviewer, d.sample_id, d.action, d.new_label or "")
        if d.status == "refused":
            continue
        expected.add(key)
        found = stored.get(key, 0)
        if d.status == "stored":
            check.confirmed += 1
            check.stored_once += found == 1
            if found == 0:
                check.lost.append(" ".join(key).strip())
        if found > 1:
            check.duplicated.append(f"{' '.join(key).strip()} x{found}")
    check.unexpected = [" ".join(key).strip() for key in stored if key not in expected]
    return check


# ------------------------------------------------------------------------------------------------- the sessions


class Tab:
    """One session's page, with the script runs of its streamlit session that ended, counted from the websocket's
    messages (`script_finished`; a run cut short for a rerun does not count), and the websockets it opened. The app
    root's data-test-script-state cannot tell when a run ended: a busy browser may batch 'rerunRequested' ->
    'running' -> 'notRunning' into no change of the attribute at all."""

    def __init__(self, page, timeout_s: float):
        self.page, self.timeout_s = page, timeout_s
        self.runs_ended = 0
        self.sockets = 0
        page.on("websocket", self._opened)

    def _opened(self, socket) -> None:
        self.sockets += 1
        socket.on("framereceived", self._received)

    def _received(self, payload: str | bytes) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if isinstance(payload, bytes):
            message = ForwardMsg.FromString(payload)
            if (message.WhichOneof("type") == "script_finished"
                    and message.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN):
                self.runs_ended += 1

    async def until(self, condition: str, what: str) -> None:
        """Wait until the JavaScript `condition` holds; a timeout says `what` was awaited."""
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        try:
            await self.page.wait_for_function(condition, polling=POLL_MS)
        except PlaywrightTimeout:
            raise PageError(f"timed out waiting for {what}") from None

    @asynccontextmanager
    async def rerun(self, what: str) -> AsyncIterator[None]:
        """Wait, after the body's action (`what`), until a script run ended after it and the app shows it idle."""
        before = self.runs_ended
        yield
        deadline = time.monotonic() + self.timeout_s
        while self.runs_ended <= before:
            if time.monotonic() > deadline:
                raise PageError(f"timed out waiting for the script run after {what}")
            await asyncio.sleep(POLL_MS / 1000)
        await self.until(IDLE, f"the app to show the end of the run after {what}")

    def errors(self):
        """Whatever shows that a render failed: an exception box or a database error line."""
        return self.page.locator("[data-testid='stException']").or_(
            self.page.get_by_test_id("stAlert").filter(has_text=ERROR_TEXT))

    async def raise_shown_error(self) -> None:
        """Raise PageError when the page shows an exception or a database error."""
        errors = self.errors()
        if await errors.count():
            raise PageError((await errors.first.inner_text()).splitlines()[0][:200])

    async def shown(self, locator) -> None:
        """Wait until `locator` (or an error) is shown; raise PageError on the error."""
        await locator.or_(self.errors()).first.wait_for()
        await self.raise_shown_error()

    async def state(self) -> str:
        """The app's script-run and connection state and its sidebar's reviewer box ('notRunning/CONNECTED, reviewer
        box enabled', ...), for an error message."""
        try:
            return await self.page.evaluate(
                "() => { const a = document.querySelector(\"[data-testid='stApp']\");"
                " const r = [...document.querySelectorAll(\"[data-testid='stSidebar'] input\")];"
                " return (a ? `${a.dataset.testScriptState}/${a.dataset.testConnectionState}` : 'no app')"
                " + `, ${r.length} sidebar input(s)` + r.map(i => i.disabled ? ' disabled' : ' enabled').join(''); }")
        except Exception as exc:  # the page may be gone with the error being reported
            return f"unknown ({type(exc).__name__})"


async def _load(tab: Tab, result: LoadResult, name: str, action: Callable[[], Awaitable], row: str | None = None
                ) -> None:
    """Open page `name` by `action` and time it until its run ended, its title and content are shown and its render
    is over (images decoded, charts drawn)."""
    heading, marker = PAGES[name]
    start = time.perf_counter()
    async with tab.rerun(f"opening {name}"):
        await action()
    await tab.shown(tab.page.get_by_role("heading", name=heading, exact=True, level=1))
    await tab.shown(tab.page.get_by_text(marker).first)
    await tab.until(RENDERED, f"the end of the render of {name}")
    await tab.raise_shown_error()
    result.times[row or name].append(time.perf_counter() - start)


async def _nav(tab: Tab, title: str) -> None:
    """Click the sidebar link of the page titled `title`."""
    await tab.page.get_by_role("link", name=title, exact=True).click()


async def _check_reviewer(tab: Tab, plan: Plan) -> None:
    """The sidebar still names the session's reviewer (the name its decisions are recorded under)."""
    shown = await tab.page.get_by_label("Reviewer", exact=True).input_value()
    if shown != plan.reviewer:
        raise PageError(f"the sidebar names reviewer {shown!r} instead of {plan.reviewer!r} after a page change")


async def _choose(tab: Tab, label: str, option: str) -> None:
    """Choose `option` in the selectbox labelled `label` (nothing when already chosen); wait for the rerun."""
    from playwright.async_api import expect

    page = tab.page
    box = page.get_by_role("combobox", name=label, exact=True)
    if await box.input_value() == option:
        return
    # Its popover closes on any scroll, and the scroll event of bringing it into view fires a frame later.
    await box.scroll_into_view_if_needed()
    await page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    await box.click()
    await expect(box).to_have_attribute("aria-expanded", "true")
    async with tab.rerun(f"choosing {option} in {label}"):
        await page.get_by_role("option", name=option, exact=True).click()
    await expect(box).to_have_value(option)


def _tile(tab: Tab, sample_id: str):
    """The grid tile of `sample_id`: the innermost block holding both its image caption and its pick box."""
    page = tab.page
    return page.locator("[data-testid='stVerticalBlock']").filter(
        has=page.get_by_test_id("stImageCaption").get_by_text(sample_id, exact=True)).filter(
        has=page.locator(f".st-key-pick_{sample_id}")).last


async def _decide(tab: Tab, result: LoadResult, row: str, button, plan: Plan, sample_id: str, action: str,
                  new_label: str | None) -> None:
    """Press the decision `button` and time it until the outcome line; record the decision and what the UI said."""
    start = time.perf_counter()
    status = "unknown"
    try:
        async with tab.rerun(f"pressing {await button.inner_text()}"):
            await button.click()
        outcome = tab.page.get_by_test_id("stAlert").filter(has_text=OUTCOME_TEXT)
        await outcome.first.wait_for()
        status = "stored" if "recorded for" in await outcome.first.inner_text() else "refused"
    finally:
        result.decisions.append(Decision(plan.reviewer, sample_id, action, new_label, status))
    result.times[row].append(time.perf_counter() - start)
    await tab.raise_shown_error()


async def _grid_decision(tab: Tab, result: LoadResult, plan: Plan, sample_id: str, action: str) -> None:
    """Pick one tile of the Review grid, choose the decision (and new label) and Apply."""
    from playwright.async_api import expect

    page = tab.page
    tile = _tile(tab, sample_id)
    # A tick runs no script (the picks stay in the page until Apply): wait for the box and the count to show it.
    await tile.get_by_test_id("stCheckbox").locator("label").click()  # the input itself is visually hidden
    await expect(tile.get_by_role("checkbox", name="pick")).to_be_checked()
    await page.get_by_text("1 picked", exact=True).wait_for()
    await _choose(tab, "Decision", "relabel to …" if action == "relabel" else action)
    if action == "relabel":
        await _choose(tab, "New label", plan.new_label)
    await _decide(tab, result, GRID_DECISION, page.get_by_role("button", name="Apply", exact=True), plan, sample_id,
                  action, plan.new_label if action == "relabel" else None)


async def _point_decision(tab: Tab, result: LoadResult, plan: Plan, sample_id: str, action: str) -> None:
    """On the Point detail page of `sample_id`, press the decision's button (relabel: to the preselected label)."""
    page = tab.page
    new_label = None
    if action == "relabel":
        new_label = await page.get_by_role("combobox", name="Relabel to", exact=True).input_value()
    await _decide(tab, result, POINT_DECISION, page.get_by_role("button", name=action.capitalize(), exact=True),
                  plan, sample_id, action, new_label)


async def _session(browser, url: str, plan: Plan, index: int, result: LoadResult, deadline: float,
                   timeout_s: float, shots: Path, first_page: str = "Overview") -> None:
    """One reviewer: `first_page` (a FIRST_PAGES key), its name in the sidebar, then its decisions (see the module's
    docstring) until its images or the time are used up; started on the Review page, its first grid decision is made
    there. The first error ends the session: reported with the step and the app's state, and a screenshot
    `<shots>/<reviewer>.png`."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    tab = Tab(page, timeout_s)
    step = "first load"
    try:
        await _load(tab, result, first_page, lambda: page.goto(f"{url}/{FIRST_PAGES[first_page]}"),
                    FIRST_LOADS[first_page])
        step = "reviewer name"
        name = page.get_by_label("Reviewer", exact=True)
        await name.fill(plan.reviewer)
        async with tab.rerun("entering the reviewer name"):
            await name.press("Enter")
        for k, sample_id in enumerate(plan.samples):
            if time.monotonic() > deadline:
                break
            action = ACTIONS[(index + k) % len(ACTIONS)]
            if k % 2 == 0:
                step = f"Review, then {action} {sample_id} on the grid"
                if k or first_page != "Review":
                    await _load(tab, result, "Review", lambda: _nav(tab, "Review"))
                await _check_reviewer(tab, plan)
                await _choose(tab, "Class", plan.label)
                await _grid_decision(tab, result, plan, sample_id, action)
            else:
                step = f"Point detail of {sample_id}, then {action}"
                await _load(tab, result, "Point detail",
                            lambda: _tile(tab, sample_id).get_by_role("button", name="Details").click())
                await _check_reviewer(tab, plan)
                await _point_decision(tab, result, plan, sample_id, action)
            step = "Decisions, Overview"
            if k % 2 or k == len(plan.samples) - 1:
                await _load(tab, result, "Decisions", lambda: _nav(tab, "Decisions"))
            if k % 2:
                await _load(tab, result, "Overview", lambda: _nav(tab, "Overview"))
    except Exception as exc:  # every failure of a session is reported, none stops the others
        result.errors.append(f"{plan.reviewer} at {step} (app {await tab.state()}): {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]}")
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(shots / f"{plan.reviewer}.png"))
    finally:
        result.reconnects += max(tab.sockets - 1, 0)
        await context.close()


def _shown(texts: list[str], marker: str | re.Pattern) -> bool:
    """Whether `marker` is among the texts of a page (markdown emphasis left out)."""
    texts = [t.replace("*", "").strip() for t in texts]
    return any(marker.search(t) if isinstance(marker, re.Pattern) else marker in t for t in texts)


def _raise_client_error(client: StClient) -> None:
    """Raise PageError when the latest run showed an exception or a database error."""
    if shown := client.errors(ERROR_TEXT):
        raise PageError(shown[0].splitlines()[0][:200])


async def _client_load(client: StClient, result: LoadResult, name: str, action: Callable[[], Awaitable],
                       row: str | None = None) -> None:
    """Open page `name` by `action` and time it until its run ended with its title and content, and its images are
    fetched."""
    heading, marker = PAGES[name]
    start = time.perf_counter()
    await action()
    _raise_client_error(client)
    if heading not in client.headings() or not _shown(client.texts(), marker):
        raise PageError(f"{name} showed {client.headings()[:2]} without {marker!r}")
    await client.fetch_images()
    result.times[row or name].append(time.perf_counter() - start)


async def _client_decide(client: StClient, result: LoadResult, row: str, button: str, plan: Plan, sample_id: str,
                         action: str, new_label: str | None) -> None:
    """Press the decision `button` and time it until the run with the outcome line ended; record the decision and
    what the page said."""
    start = time.perf_counter()
    status = "unknown"
    try:
        await client.press(button)
        outcome = [t for t in client.texts("alert") if OUTCOME_TEXT.search(t)]
        if outcome:
            status = "stored" if "recorded for" in outcome[0] else "refused"
    finally:
        result.decisions.append(Decision(plan.reviewer, sample_id, action, new_label, status))
    result.times[row].append(time.perf_counter() - start)
    _raise_client_error(client)


async def _protocol_session(url: str, plan: Plan, index: int, result: LoadResult, deadline: float,
                            timeout_s: float, shots: Path, first_page: str = "Overview") -> None:
    """The steps of a browser session (`_session`) over streamlit's protocol (`StClient`): the same pages, widgets
    and buttons, without rendering. The first error ends the session: reported with the step, and the texts of the
    page it was on written to `<shots>/<reviewer>.txt`."""
    step = "connecting"
    async with StClient(url, timeout_s) as client:
        try:
            step = "first load"
            await _client_load(client, result, first_page, lambda: client.open(FIRST_PAGES[first_page]),
                               FIRST_LOADS[first_page])
            step = "reviewer name"
            await client.set("reviewer", plan.reviewer)
            for k, sample_id in enumerate(plan.samples):
                if time.monotonic() > deadline:
                    break
                action = ACTIONS[(index + k) % len(ACTIONS)]
                new_label = plan.new_label if action == "relabel" else None
                if k % 2 == 0:
                    step = f"Review, then {action} {sample_id} on the grid"
                    if k or first_page != "Review":
                        await _client_load(client, result, "Review", lambda: client.navigate("Review"))
                    await client.set("label", plan.label)
                    await client.set(f"pick_{sample_id}", True)
                    await client.set("decision_action", "relabel to …" if action == "relabel" else action)
                    if new_label:
                        await client.set("decision_label", new_label)
                    await _client_decide(client, result, GRID_DECISION, "decision_apply", plan, sample_id, action,
                                         new_label)
                else:
                    step = f"Point detail of {sample_id}, then {action}"
                    await _client_load(client, result, "Point detail", lambda: client.press(f"detail_{sample_id}"))
                    if new_label:
                        await client.set(f"point_label_{sample_id}", new_label)
                    await _client_decide(client, result, POINT_DECISION, f"point_{action}", plan, sample_id, action,
                                         new_label)
                step = "Decisions, Overview"
                if k % 2 or k == len(plan.samples) - 1:
                    await _client_load(client, result, "Decisions", lambda: client.navigate("Decisions"))
                if k % 2:
                    await _client_load(client, result, "Overview", lambda: client.navigate("Overview"))
        except Exception as exc:  # every failure of a session is reported, none stops the others
            result.errors.append(f"{plan.reviewer} at {step}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            with contextlib.suppress(Exception):
                (shots / f"{plan.reviewer}.txt").write_text("\n".join(client.texts()))


CLIENTS = ("browser", "protocol")  # chromium and Playwright, or streamlit's protocol without rendering (StClient)


async def _drive(url: str, plans: list[Plan], result: LoadResult, duration_s: float, ramp_s: float,
                 timeout_s: float, shots: Path, first_page: str, client: str) -> None:
    """All sessions, started `ramp_s` apart in all: `client` 'browser' in one headless chromium, 'protocol' as
    StClient sessions in this event loop."""
    deadline = time.monotonic() + duration_s

    async def every_session(session: Callable[..., Awaitable]) -> None:
        async def start(i: int, plan: Plan) -> None:
            await asyncio.sleep(ramp_s * i / max(len(plans), 1))
            await session(url, plan, i, result, deadline, timeout_s, shots, first_page)

        await asyncio.gather(*(start(i, plan) for i, plan in enumerate(plans)))

    if client == "protocol":
        await every_session(_protocol_session)
        return
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=timeout_s * 1000)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            await every_session(functools.partial(_session, browser))
        finally:
            await browser.close()


def run_load(source: Path, workdir: Path, *, sessions: int = 20, decisions: int = 2, duration_s: float = 900.0,
             ramp_s: float = 5.0, step_timeout_s: float = 300.0, writer_models: int | None = WRITER_MODELS,
             first_page: str = "Overview", client: str = "browser") -> LoadResult:
    """Serve a copy of the audit `source` (in `workdir`), keep a writer job running on it (none when `writer_models` is
    None), drive `sessions` sessions (`client`: a CLIENTS kind) of `decisions` decisions each, each opening
    `first_page` first (none started after `duration_s`), then check the database."""
    if first_page not in FIRST_PAGES:
        raise ValueError(f"a session cannot start on {first_page!r}; use one of {', '.join(FIRST_PAGES)}")
    if client not in CLIENTS:
        raise ValueError(f"unknown client {client!r}; use one of {', '.join(CLIENTS)}")
    if client == "browser" and not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing (install it with `make browser`)")
    db = copy_audit(source, workdir / "db")
    store = Store(db)
    plans = plan_sessions(store, sessions, decisions)
    models_before = int(store.scalar("SELECT count(*) FROM shadow_models"))
    result = LoadResult(sessions=sessions)
    writer = None if writer_models is None else Writer(db, workdir, writer_models)
    start = time.perf_counter()
    with dashboard(db, workdir / "streamlit.log") as url:
        if writer is not None:
            writer.start()
        try:
            asyncio.run(_drive(url, plans, result, duration_s, ramp_s, step_timeout_s, workdir, first_page, client))
        finally:
            result.wall_s = time.perf_counter() - start
            if writer is not None:
                writer.stop()
                result.jobs = dict(writer.jobs)
    result.models_written = int(store.scalar("SELECT count(*) FROM shadow_models")) - models_before
    result.check = verify(store, result.decisions, [plan.reviewer for plan in plans])
    return result


def format_table(result: LoadResult) -> str:
    """The timings per page and decision kind (count, p50, p95, max), then the totals and the database check."""
    lines = [f"{'page':<26}{'count':>7}{'p50 s':>9}{'p95 s':>9}{'max s':>9}"]
    for row in (*ROWS, "all page loads"):
        values = result.page_loads if row == "all page loads" else result.times.get(row, [])
        if values:
            lines.append(f"{row:<26}{len(values):>7}{_percentile(values, 50):>9.2f}{_percentile(values, 95):>9.2f}"
                         f"{max(values):>9.2f}")
    statuses = Counter(d.status for d in result.decisions)
    jobs = Counter(result.jobs.values())
    check = result.check
    lines += [
        "",
        f"sessions {result.sessions}, page loads {len(result.page_loads)}, decisions {len(result.decisions)} "
        f"({', '.join(f'{n} {s}' for s, n in sorted(statuses.items())) or 'none'}), errors {len(result.errors)}, "
        f"websocket reconnects {result.reconnects}, wall {result.wall_s:.0f} s",
        f"writer: {len(result.jobs)} job(s) ({', '.join(f'{n} {s}' for s, n in sorted(jobs.items()))}), "
        f"{result.models_written} shadow models written during the load" if result.jobs else "writer: none",
        f"database: {check.confirmed} confirmed decisions, {check.stored_once} stored exactly once, "
        f"{len(check.duplicated)} duplicated, {len(check.lost)} lost, {len(check.unexpected)} unexpected rows",
        *(f"  error: {e}" for e in result.errors),
        *(f"  duplicated: {d}" for d in check.duplicated), *(f"  lost: {d}" for d in check.lost),
        *(f"  unexpected: {d}" for d in check.unexpected),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the load from the command line and print the table; 1 when a session failed or the check did not hold."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="an audited database (copied; default: build a small audit)")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--decisions", type=int, default=2, help="decisions per session (2: every page visited)")
    parser.add_argument("--duration", type=float, default=900.0, help="no session starts a decision after this (s)")
    parser.add_argument("--ramp", type=float, default=5.0, help="the sessions start spread over this (s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="limit of one step of a session (s)")
    parser.add_argument("--first-page", choices=list(FIRST_PAGES), default="Overview",
                        help="the page each session opens first")
    parser.add_argument("--client", choices=CLIENTS, default="browser",
                        help="chromium sessions, or streamlit's protocol without rendering (st_client.py)")
    parser.add_argument("--no-writer", action="store_true", help="no background job (a baseline)")
    parser.add_argument("--workdir", type=Path, help="keep the database copy, the server's log and the screenshots "
                                                      "of failed sessions here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="memaudit-load-") as tmp:
        workdir = args.workdir or Path(tmp)
        source = args.db or build_small_audit(workdir / "source")
        result = run_load(source, workdir / "run", sessions=args.sessions, decisions=args.decisions,
                          duration_s=args.duration, ramp_s=args.ramp, step_timeout_s=args.timeout,
                          writer_models=None if args.no_writer else WRITER_MODELS, first_page=args.first_page,
                          client=args.client)
    print(format_table(result))
    return 0 if result.check.exact and not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
