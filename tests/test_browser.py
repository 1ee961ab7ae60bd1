"""The real dashboard (`streamlit run app/main.py`) driven in Debian's chromium through Playwright: the Overview and
Review pages render, and the whole curation flow (filter, pick, decide, undo, export) works end to end in a browser
on a private copy of the small database."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, IDLE, dashboard

MIN_IMAGES = 24
# accuracy, ApB, mem histogram, the ApB-vs-mem scatter, flags per kind and class, and the embedding map
CHARTS = 6
MIN_MISLABELED = 3
EXPORT_NAME = "curated"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMEOUT_MS = 30_000
REVIEWER = "tester"

# Counts the script runs that ended, so a test can wait for the rerun that its own action triggered, not just for the
# app to look idle before that rerun has begun. It reads the server's ForwardMsg.script_finished (field 6, a varint;
# 2 is FINISHED_EARLY_FOR_RERUN, superseded by the next run) off the websocket, two frames after it arrived (the
# page has drawn the run by then): a rerun of the decision bar alone can end before the app root's
# data-test-script-state ever shows 'running', so that attribute misses it.
RUN_COUNTER = """
window.__memauditRuns = 0;
(() => {
  const varint = (b, i) => {
    let v = 0, s = 0, x;
    do { x = b[i++]; v += (x & 127) * 2 ** s; s += 7; } while (x & 128);
    return [v, i];
  };
  const finished = (b) => {
    let i = 0, tag, v;
    while (i < b.length) {
      [tag, i] = varint(b, i);
      const wire = tag & 7;
      if (wire === 0) { [v, i] = varint(b, i); if (tag >>> 3 === 6) return v !== 2; }
      else if (wire === 2) { [v, i] = varint(b, i); i += v; }
      else if (wire === 1) i += 8;
      else if (wire === 5) i += 4;
      else return false;
    }
    return false;
  };
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', e => {
        if (e.data instanceof ArrayBuffer && finished(new Uint8Array(e.data)))
          requestAnimationFrame(() => requestAnimationFrame(() => { window.__memauditRuns += 1; }));
      });
    }
  };
})();
"""

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (install it with `make browser`)")]


def _plant_mislabeled(db: Path, wanted: int) -> None:
    """Give at least `wanted` training samples a 'mislabeled' flag (detail as the label-issue detector writes it)
    when the pipeline flagged fewer."""
    from auditor.store.database import Store

    store = Store(db)
    flagged = set(store.query("SELECT DISTINCT f.sample_id FROM flags f JOIN samples s USING (sample_id) "
                              "WHERE f.kind = 'mislabeled' AND s.split = 'train'")["sample_id"])
    if len(flagged) >= wanted:
        return
    classes = store.query("SELECT label FROM classes ORDER BY label_index")["label"].tolist()
    train = store.query("SELECT sample_id, label FROM samples WHERE split = 'train' ORDER BY sample_id")
    rows = []
    for sample_id, label in train.itertuples(index=False):
        if len(flagged) + len(rows) >= wanted:
            break
        if sample_id in flagged:
            continue
        suggested = next(c for c in classes if c != label)
        detail = {"given": label, "suggested": suggested, "self_confidence": 0.05, "knn_disagreement": 0.9,
                  "knn_label": suggested, "disagreeing_neighbors": 9, "neighbors": 10}
        rows.append((sample_id, "mislabeled", 0.9, json.dumps(detail), "planted-by-test"))
    with store.connect() as con:
        con.executemany("INSERT INTO flags (sample_id, kind, score, detail, run_id) VALUES (?, ?, ?, ?, ?)", rows)


@pytest.fixture(scope="module")
def curation_db(small_db, tmp_path_factory) -> Path:
    """A private copy of the small database (with its artifacts) that the flow may write decisions and exports
    into; the shared `small_db` is never written. It has mislabeled flags on >= MIN_MISLABELED training images."""
    folder = tmp_path_factory.mktemp("curation-db")
    for source in small_db.parent.iterdir():
        if source.name.startswith(small_db.name):  # the file, its WAL if any, and its .artifacts folder
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / source.name)
    db = folder / small_db.name
    _plant_mislabeled(db, MIN_MISLABELED)
    return db


@pytest.fixture(scope="module")
def app_url(curation_db, tmp_path_factory) -> Iterator[str]:
    """URL of a streamlit server on a free loopback port serving the dashboard for the copy of the small database."""
    with dashboard(curation_db, tmp_path_factory.mktemp("streamlit") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    """A chromium page (headless, sandbox off, no background networking)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(RUN_COUNTER)
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where the flow's screenshots go: $MEMAUDIT_TEST_OUTPUT when set, else a temporary folder."""
    wanted = os.environ.get("MEMAUDIT_TEST_OUTPUT")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def _rerun(page) -> Iterator[None]:
    """Wait, after the body's action, until a script run that ended after the action left the app idle."""
    before = page.evaluate("window.__memauditRuns")
    yield
    page.wait_for_function(f"n => window.__memauditRuns > n && {IDLE}", arg=before)


def _idle(page) -> None:
    """Wait until no script run is in progress (after a page load)."""
    page.wait_for_function(IDLE)


def _go(page, title: str, heading: str) -> None:
    """Open a page by its sidebar link and wait for its title and the end of its run."""
    with _rerun(page):
        page.get_by_role("link", name=title, exact=True).click()
    page.get_by_role("heading", name=heading, exact=True, level=1).wait_for()


def _sign(page, name: str) -> None:
    """Type the reviewer's name in the sidebar (nothing is recorded before) and wait for the rerun."""
    box = page.get_by_test_id("stSidebar").get_by_label("Reviewer", exact=True)
    box.fill(name)
    with _rerun(page):
        box.press("Enter")


def _choose(page, label: str, option: str | re.Pattern) -> None:
    """Choose `option` (a different one than the current) in the selectbox labelled `label`; wait for the rerun."""
    from playwright.sync_api import expect

    box = page.get_by_role("combobox", name=label, exact=True)
    # Its popover closes on any scroll, and the scroll event of bringing it into view fires a frame later: scroll
    # first and let that event pass, or the click opens the popover and that late scroll event closes it again.
    box.scroll_into_view_if_needed()
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    box.click()
    expect(box).to_have_attribute("aria-expanded", "true")
    with _rerun(page):
        page.get_by_role("option", name=option, exact=True if isinstance(option, str) else None).click()
    expect(box).to_have_value(option)


def _tile(page, sample_id: str):
    """The grid tile of `sample_id`, by its keyed container (app.grid.tile: tile, tiledone, tilefocus or
    tiledonefocus), never by a caption: the Focus panel beside the grid shows the same caption."""
    return page.locator(", ".join(f".st-key-tile{kind}_{sample_id}" for kind in ("", "done", "focus", "donefocus")))


def _pick(page, sample_id: str, picked_now: int) -> None:
    """Tick the 'pick' box of one tile and wait until it shows ticked and the decision bar counts `picked_now` picks
    (the page keeps the picks: a tick runs no script, app.picks)."""
    from playwright.sync_api import expect

    tile = _tile(page, sample_id)
    tile.get_by_test_id("stCheckbox").locator("label").click()  # the input itself is visually hidden
    expect(tile.get_by_role("checkbox", name="pick")).to_be_checked()
    page.get_by_text(f"{picked_now} picked", exact=True).wait_for()


def _apply(page, toast: str) -> None:
    """Press Apply and wait for the end of the rerun, the confirmation line and the picks cleared."""
    with _rerun(page):
        page.get_by_role("button", name="Apply", exact=True).click()
    page.get_by_test_id("stAlert").filter(has_text=toast).wait_for()
    page.get_by_text("0 picked", exact=True).wait_for()


def _export(page, name: str) -> None:
    """Open Export, write the cleaned manifest as `name` (csv) and wait for the confirmation."""
    _go(page, "Export", "Export a cleaned manifest")
    box = page.get_by_label("File name", exact=True)
    box.fill(name)
    with _rerun(page):
        box.press("Enter")
    with _rerun(page):
        page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text(re.compile(r"^Wrote \d+ of \d+ rows")).wait_for()
    assert page.locator("[data-testid='stException']").count() == 0


def _shoot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_overview_renders_with_charts(page, app_url):
    page.goto(app_url)
    page.get_by_role("heading", name="Audit overview").wait_for()
    page.get_by_text("Training images").first.wait_for()
    page.get_by_role("heading", name="Memorization").wait_for()
    page.get_by_text("pLOO-improved").first.wait_for()
    drawn = page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg")
    page.get_by_role("heading", name="Findings").wait_for()
    page.get_by_text("Flags per kind").first.wait_for()
    page.get_by_role("heading", name="Embedding map").wait_for()
    drawn.nth(CHARTS - 1).wait_for()
    assert page.locator("[data-testid='stVegaLiteChart']").count() == CHARTS
    assert page.get_by_role("heading", name="Jobs").count() == 0  # the jobs moved to their own page
    assert page.locator("[data-testid='stException']").count() == 0


def test_review_renders_images(page, app_url):
    page.goto(app_url)
    page.get_by_role("link", name="Review", exact=True).click()
    page.get_by_role("heading", name="Review images").wait_for()
    images = page.locator("[data-testid='stImage'] img")
    images.nth(MIN_IMAGES - 1).wait_for()
    page.wait_for_function(
        "n => [...document.querySelectorAll(\"[data-testid='stImage'] img\")]"
        ".filter(img => img.complete && img.naturalWidth > 0).length >= n", arg=MIN_IMAGES, timeout=TIMEOUT_MS)
    assert images.count() >= MIN_IMAGES  # the grid, then the evidence of one of its images
    page.get_by_role("heading", name="Evidence").wait_for()
    # The highest-ApB images: most are outside the scored shortlist, audit sample and extension.
    page.goto(f"{app_url}/review?sort=apb_desc")
    page.get_by_text("mem – (not a candidate)").first.wait_for(timeout=TIMEOUT_MS)
    assert page.locator("[data-testid='stException']").count() == 0


@pytest.mark.parametrize("path, heading", [("review", "Review images"), ("experiments", "Experiments")])
def test_a_deep_link_opens_its_page_inside_the_navigation(page, app_url, path, heading):
    """A bookmarked /review opens the Review page with the dashboard's sidebar (titles, not file names)."""
    page.goto(f"{app_url}/{path}")
    page.get_by_role("heading", name=heading, exact=True, level=1).wait_for()
    _idle(page)
    nav = page.get_by_test_id("stSidebarNav")
    for title in ("Overview", "Review", "Point detail", "Decisions", "Export", "Experiments", "Jobs"):
        assert nav.get_by_role("link", name=title, exact=True).count() == 1, title
    assert nav.get_by_role("link", name="main", exact=True).count() == 0
    assert page.locator("[data-testid='stException']").count() == 0


def test_curation_flow(page, app_url, curation_db, screenshot_dir):
    """Review -> filter mislabeled -> remove two, relabel one, undo one remove -> export; the exported manifest and
    changelog on disk and the decisions in the database say exactly that; a screenshot of every page."""
    from playwright.sync_api import expect

    from auditor.review.reviews import current_decisions, decision_history
    from auditor.store.database import Store

    store = Store(curation_db)
    samples = store.query("SELECT sample_id, label, split FROM samples").set_index("sample_id")
    classes = store.query("SELECT label FROM classes ORDER BY label_index")["label"].tolist()
    shots = []

    page.goto(app_url)
    page.get_by_role("heading", name="Audit overview").wait_for()
    page.get_by_role("heading", name="Embedding map").wait_for()
    drawn = page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg")
    drawn.nth(CHARTS - 1).wait_for()
    _idle(page)
    shots.append(_shoot(page, screenshot_dir, "overview"))

    # 1. Review, only the images flagged mislabeled
    _go(page, "Review", "Review images")
    _sign(page, REVIEWER)
    _choose(page, "Flag", re.compile(r"^Mislabeled \(\d+\)$"))
    page.get_by_text("images flagged mislabeled", exact=False).first.wait_for()
    keys = page.locator("[class*='st-key-pick_']:has([data-testid='stCheckbox'])").evaluate_all(
        "els => els.map(e => [...e.classList].find(c => c.startsWith('st-key-pick_')).slice('st-key-pick_'.length))")
    flagged = set(store.query("SELECT sample_id FROM flags WHERE kind = 'mislabeled'")["sample_id"])
    shown = [k for k in keys if k in flagged and samples.loc[k, "split"] == "train"]
    assert set(keys) <= flagged, f"the filter shows unflagged images: {sorted(set(keys) - flagged)}"
    assert len(shown) >= MIN_MISLABELED, keys
    undone, removed, relabeled = shown[:3]
    old_label = samples.loc[relabeled, "label"]
    new_label = next(c for c in reversed(classes) if c != old_label)

    # 2. remove two, relabel one, then undo one of the removes
    _pick(page, undone, 1)
    _pick(page, removed, 2)
    _choose(page, "Decision", "remove")
    _apply(page, "remove recorded for 2 images")
    expect(_tile(page, removed)).to_contain_text("remove")

    _choose(page, "Decision", "relabel to …")
    _choose(page, "New label", new_label)
    _pick(page, relabeled, 1)
    _apply(page, "relabel recorded for 1 image")
    expect(_tile(page, relabeled)).to_contain_text(f"relabel → {new_label}")

    _choose(page, "Decision", "undo last")
    _pick(page, undone, 1)
    _apply(page, "Undid the decision of 1 image")
    expect(_tile(page, undone)).not_to_contain_text("remove")
    expect(_tile(page, removed)).to_contain_text("remove")
    assert page.locator("[data-testid='stException']").count() == 0
    shots.append(_shoot(page, screenshot_dir, "review"))

    # the Point detail of the relabeled image, from its tile
    with _rerun(page):
        _tile(page, relabeled).get_by_role("button", name="Details").click()
    page.get_by_role("heading", name="Point detail", exact=True).wait_for()
    expect(page.get_by_label("Sample id", exact=True)).to_have_value(relabeled)
    page.get_by_text("Training dynamics").wait_for()
    assert page.locator("[data-testid='stException']").count() == 0
    shots.append(_shoot(page, screenshot_dir, "point_detail"))

    _go(page, "Decisions", "Decisions")
    page.get_by_text("Images decided").wait_for()
    expect(page.get_by_test_id("stMetricValue").first).to_have_text("2")
    shots.append(_shoot(page, screenshot_dir, "decisions"))

    # 3. export under a name of our own
    _export(page, EXPORT_NAME)
    shots.append(_shoot(page, screenshot_dir, "export"))

    _go(page, "Jobs", "Jobs")
    page.get_by_text("Start stages in the background").wait_for()
    shots.append(_shoot(page, screenshot_dir, "jobs"))

    # the exported manifest: one image removed, one relabeled, every other one as it was
    exports = curation_db.parent / "exports"
    manifest = pd.read_csv(exports / f"{EXPORT_NAME}.csv", dtype=str).set_index("sample_id")
    assert not manifest.index.duplicated().any()
    assert set(samples.index) - set(manifest.index) == {removed}
    assert set(manifest.index) <= set(samples.index)
    assert manifest.loc[relabeled, "label"] == new_label
    others = samples.index.difference([removed, relabeled])
    pd.testing.assert_series_equal(manifest.loc[others, "label"], samples.loc[others, "label"].astype(str),
                                   check_names=False)
    pd.testing.assert_series_equal(manifest.loc[samples.index.drop(removed), "split"],
                                   samples.loc[samples.index.drop(removed), "split"], check_names=False)
    changelog = pd.read_csv(exports / f"{EXPORT_NAME}.changelog.csv", dtype=str)
    assert sorted(zip(changelog["sample_id"], changelog["change"])) == sorted(
        [(removed, "removed"), (relabeled, "relabeled")])
    relabel_row = changelog.set_index("sample_id").loc[relabeled]
    assert (relabel_row["old_label"], relabel_row["new_label"]) == (old_label, new_label)

    # each decision stored exactly once: the two that count, and one remove + one undo for the undone image
    current = current_decisions(store)
    assert not current["sample_id"].duplicated().any()
    assert sorted(zip(current["sample_id"], current["action"], current["new_label"].fillna("-"))) == sorted(
        [(removed, "remove", "-"), (relabeled, "relabel", new_label)])
    assert decision_history(store, removed)["action"].tolist() == ["remove"]
    assert decision_history(store, relabeled)["action"].tolist() == ["relabel"]
    assert decision_history(store, undone)["action"].tolist() == ["remove", "undo"]
    assert set(decision_history(store, undone)["reviewer"]) == {REVIEWER}

    # 4. a screenshot of every page
    assert [shot.name for shot in shots] == [f"{n}.png" for n in
                                              ("overview", "review", "point_detail", "decisions", "export", "jobs")]
    for shot in shots:
        assert shot.is_file() and shot.stat().st_size > len(PNG_MAGIC), shot
        assert shot.read_bytes()[:len(PNG_MAGIC)] == PNG_MAGIC, shot
