"""The real dashboard (`streamlit run app/main.py`) driven in Debian's chromium through Playwright."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
MIN_IMAGES = 24
CHARTS = 5

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (install it with `make browser`)")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 30.0) -> None:
    """Poll streamlit's health endpoint until it answers 200, failing early (with its `log`) if the server died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"streamlit did not become healthy at {url} within {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def app_url(small_db, tmp_path_factory) -> Iterator[str]:
    """URL of a streamlit server on a free loopback port serving the dashboard for the small database."""
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.address", "127.0.0.1",
             "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--", "--db", str(small_db)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def page(app_url):
    """A chromium page (headless, sandbox off, no background networking)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def test_overview_renders_with_charts(page, app_url):
    page.goto(app_url)
    page.get_by_role("heading", name="Audit overview").wait_for(timeout=30_000)
    page.get_by_text("Training images").first.wait_for()
    page.get_by_role("heading", name="Memorization").wait_for(timeout=30_000)
    page.get_by_text("pLOO-improved").first.wait_for()
    drawn = page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg")
    page.get_by_role("heading", name="Findings").wait_for(timeout=30_000)
    page.get_by_role("heading", name="Embedding map").wait_for(timeout=30_000)
    # accuracy, ApB, mem histogram, the ApB-vs-mem scatter and the embedding map
    drawn.nth(CHARTS - 1).wait_for(timeout=30_000)
    assert page.locator("[data-testid='stVegaLiteChart']").count() == CHARTS
    page.get_by_role("heading", name="Jobs").wait_for()
    assert page.locator("[data-testid='stException']").count() == 0


def test_review_renders_images(page, app_url):
    page.goto(app_url)
    page.get_by_role("link", name="Review", exact=True).click()
    page.get_by_role("heading", name="Review images").wait_for(timeout=30_000)
    images = page.locator("[data-testid='stImage'] img")
    images.nth(MIN_IMAGES - 1).wait_for(timeout=30_000)
    page.wait_for_function(
        "n => [...document.querySelectorAll(\"[data-testid='stImage'] img\")]"
        ".filter(img => img.complete && img.naturalWidth > 0).length >= n", arg=MIN_IMAGES, timeout=30_000)
    assert images.count() >= MIN_IMAGES  # the grid, then the evidence of one of its images
    assert page.get_by_text("mem – (not a candidate)").count() > 0
    page.get_by_role("heading", name="Evidence").wait_for(timeout=30_000)
    assert page.locator("[data-testid='stException']").count() == 0
