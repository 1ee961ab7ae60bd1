"""Issue 15 in a real browser (chromium via Playwright): Review's view lives in the URL, so a shared link opens it
and the Back button returns to it from Point detail."""

from __future__ import annotations

import re

from test_browser import _idle, _rerun, app_url, curation_db, page, pytestmark  # noqa: F401 (fixtures, marks)


def _page_number(page):
    """The Review page-number input (assert on it with expect, which waits for the rerun to settle)."""
    return page.get_by_label(re.compile(r"^Page \(of \d+\)$"))


def test_a_link_opens_the_review_view_and_back_returns_to_it(page, app_url):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/review?flag=long_tail&sort=score_desc&page_size=12&page=2")
    page.get_by_role("heading", name="Review images", exact=True).wait_for()
    _idle(page)
    page.get_by_text("images flagged long tail", exact=False).first.wait_for()
    expect(_page_number(page)).to_have_value("2")
    expect(page.get_by_text(re.compile(r"^Images 13–"))).to_be_visible()
    tile = page.locator("[data-testid='stVerticalBlock']").filter(
        has=page.get_by_role("button", name="Details")).last
    with _rerun(page):
        tile.get_by_role("button", name="Details").click()
    page.get_by_role("heading", name="Point detail", exact=True).wait_for()
    assert "id=" in page.url
    page.go_back()
    page.get_by_role("heading", name="Review images", exact=True).wait_for()
    _idle(page)
    page.get_by_text("images flagged long tail", exact=False).first.wait_for()
    expect(_page_number(page)).to_have_value("2")
    assert "flag=long_tail" in page.url
    assert page.locator("[data-testid='stException']").count() == 0


def test_tile_labels_are_whole_in_a_1000_px_window(page, app_url):
    """The pick box's label and the Details button read in full in a narrow window, not as '|' and 'D.'."""
    page.set_viewport_size({"width": 1000, "height": 1000})
    try:
        page.goto(f"{app_url}/review")
        page.get_by_role("heading", name="Review images", exact=True).wait_for()
        _idle(page)
        label = page.locator("[class*='st-key-pick_'] label").first
        details = page.get_by_role("button", name="Details").first
        for element in (label, details):
            scroll, client = element.evaluate("e => [e.scrollWidth, e.clientWidth]")
            assert scroll <= client, element
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
