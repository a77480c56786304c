"""The page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Skipped when /usr/bin/chromium or the playwright package is missing; CI installs both.
Playwright's own browser download is never used: the system Chromium is launched directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import report_synthetic as synthetic

from nndiag.report import write_html
from nndiag.results import STATUSES

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("NNDIAG_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A loaded report page and everything its console said."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.dialogs: list[str] = []  # an injected alert() would land here
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(path.as_uri(), wait_until="load")

    def visible(self, selector: str) -> list[Any]:
        return [e for e in self.page.query_selector_all(selector) if e.is_visible()]


@pytest.fixture(scope="module")
def demo_page(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    path = write_html(synthetic.demo_report(), tmp_path_factory.mktemp("page") / "demo.html")
    page = Page(browser, path)
    yield page
    page.page.close()


def test_loads_without_errors_or_network(demo_page: Page) -> None:
    assert demo_page.errors == []
    assert all(url.startswith(("file:", "data:")) for url in demo_page.requests), demo_page.requests
    assert demo_page.page.title().startswith("nndiag report: failed")


def test_every_image_decodes(demo_page: Page) -> None:
    # Collapsed results hold images too: they must decode all the same.
    sizes = demo_page.page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(sizes) >= 10
    assert all(complete and width > 0 and height > 0 for complete, width, height in sizes), sizes


@pytest.mark.parametrize("status", STATUSES)
def test_status_filter_shows_only_matching_results(demo_page: Page, status: str) -> None:
    page = demo_page.page
    page.click(f'button[data-filter="{status}"]')
    shown = demo_page.visible("details.result")
    assert shown, f"no {status} result visible"
    assert {e.get_attribute("data-status") for e in shown} == {status}
    for section in demo_page.visible("section.subject"):
        assert section.query_selector(f"details.result.st-{status}") is not None
    rows = demo_page.visible("table.grid tbody tr")
    assert rows and all(r.query_selector(f"td.cell.st-{status}") for r in rows)
    assert all(e.get_attribute("open") is not None for e in shown)  # opened for reading
    assert page.get_attribute(f'button[data-filter="{status}"]', "aria-pressed") == "true"

    page.click('button[data-filter="all"]')
    assert len(demo_page.visible("details.result")) == len(synthetic.demo_report())
    assert demo_page.errors == []


def test_grid_cell_opens_its_collapsed_result(demo_page: Page) -> None:
    page = demo_page.page
    page.click('button[data-expand="close"]')
    page.click('button[data-filter="fail"]')
    passing = page.query_selector("section.has-fail details.result.st-pass")
    anchor = passing.get_attribute("id")
    assert passing.get_attribute("open") is None and not passing.is_visible()
    page.click(f'td.cell a[href="#{anchor}"]')  # dimmed by the filter, still a link
    page.wait_for_function(f"document.getElementById('{anchor}').open")
    assert passing.is_visible()
    assert page.get_attribute("body", "data-show") == "all"


def test_expand_and_collapse_all(demo_page: Page) -> None:
    page = demo_page.page
    page.click('button[data-expand="close"]')
    assert page.eval_on_selector_all("details.result", "ds => ds.filter(d => d.open).length") == 0
    page.click('button[data-expand="open"]')
    assert page.eval_on_selector_all("details.result", "ds => ds.every(d => d.open)")


def test_hostile_names_show_as_text(browser: Any, tmp_path: Path) -> None:
    path = write_html(synthetic.hostile_report(), tmp_path / "hostile.html")
    page = Page(browser, path)
    try:
        assert page.errors == []
        # Nothing injected ran or loaded: no alert, no image but the plots, one script.
        page.page.wait_for_timeout(100)
        assert page.dialogs == []
        assert page.page.eval_on_selector_all("script", "s => s.length") == 1
        sources = page.page.eval_on_selector_all("img", "imgs => imgs.map(i => i.src)")
        assert all(src.startswith("data:image/png;base64,") for src in sources)
        text = page.page.inner_text("body")
        for raw in synthetic.HOSTILE:
            assert raw in text
        names = page.page.eval_on_selector_all(
            "section.subject > h2 .name", "ns => ns.map(n => n.textContent)"
        )
        assert names == list(synthetic.hostile_report().subjects)
    finally:
        page.page.close()


def test_screenshot(demo_page: Page, tmp_path: Path) -> None:
    """A full-page screenshot renders (a smoke test of layout; the PNG is in tmp_path)."""
    demo_page.page.click('button[data-filter="all"]')
    shot = demo_page.page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert shot.startswith(b"\x89PNG")


# -- search, rerun, durations, comparison, legibility --------------------------------------------
SHOTS = os.environ.get("NNDIAG_SCREENSHOTS")  # a folder to keep the screenshots in, to look at


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    folder = Path(SHOTS) if SHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    assert page.screenshot(path=str(folder / name), full_page=True).startswith(b"\x89PNG")


@pytest.fixture
def wide_page(browser: Any, tmp_path: Path) -> Iterator[Page]:
    """The demo report against an earlier one, at 1400 px."""
    import dataclasses

    report = synthetic.demo_report()
    earlier = synthetic.demo_report()
    earlier.results = [
        dataclasses.replace(r, status="pass") if r.check == "gradient_check" else r
        for r in earlier.results
    ]
    path = write_html(report, tmp_path / "wide.html", against=earlier)
    page = Page(browser, path)
    page.page.set_viewport_size({"width": 1400, "height": 900})
    yield page
    page.page.close()


def test_search_narrows_results_and_says_how_many(wide_page: Page, tmp_path: Path) -> None:
    page = wide_page.page
    page.fill("#search", "convnet warn")
    shown = wide_page.visible("details.result")
    assert shown and all(
        "convnet" in e.get_attribute("data-search") and "warn" in e.get_attribute("data-search")
        for e in shown
    )
    total = len(page.query_selector_all("details.result"))
    assert page.inner_text("#search-count") == f"{len(shown)} of {total} results"
    _shot(page, tmp_path, "search.png")
    page.fill("#search", "")
    assert len(wide_page.visible("details.result")) == total
    assert wide_page.errors == []


def test_durations_sort_by_each_column(wide_page: Page) -> None:
    page = wide_page.page

    def seconds() -> list[float]:
        return [
            float(c.get_attribute("data-value"))
            for c in page.query_selector_all("#durations-table tbody td:nth-child(4)")
        ]

    assert seconds() == sorted(seconds(), reverse=True)  # slowest first
    page.click("#durations-table th:nth-child(4) button")  # again: fastest first
    assert seconds() == sorted(seconds())
    page.click("#durations-table th:nth-child(1) button")
    names = [
        c.inner_text() for c in page.query_selector_all("#durations-table tbody td:first-child")
    ]
    assert names == sorted(names, reverse=True)


def test_comparison_rerun_and_whole_messages(wide_page: Page, tmp_path: Path) -> None:
    page = wide_page.page
    assert page.is_visible("#comparison")
    assert "New failures" in page.inner_text("#comparison")
    page.click("#comparison a")  # a new failure's link opens its result
    target = page.evaluate("decodeURIComponent(location.hash.slice(1))")
    assert page.evaluate(f"document.getElementById({target!r}).open")
    # Every rerun command is on the page; no message is cut by an ellipsis.
    assert len(page.query_selector_all(".rerun code")) == len(
        page.query_selector_all("details.result")
    )
    cut = page.evaluate(
        "Array.from(document.querySelectorAll('summary .msg'))"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).length"
    )
    assert cut == 0
    _shot(page, tmp_path, "comparison.png")


def test_histogram_labels_are_at_least_10px(wide_page: Page, tmp_path: Path) -> None:
    from nndiag.report import plots

    page = wide_page.page
    page.click('button[data-expand="open"]')
    # The label font in the PNG, and the scale the page draws the PNG at.
    label_px = plots.FONT * plots.DPI / 72
    scales = page.evaluate(
        "Array.from(document.querySelectorAll('img[alt*=\"histogram\" i]'))"
        ".map(i => i.getBoundingClientRect().width / i.naturalWidth)"
    )
    assert scales, "no histogram on the page"
    assert min(scales) * label_px >= 10
    _shot(page, tmp_path, "histograms.png")


@pytest.mark.parametrize("width", [800, 1400])
def test_layout_holds_at_narrow_and_wide_windows(demo_page: Page, width: int) -> None:
    page = demo_page.page
    page.set_viewport_size({"width": width, "height": 900})
    try:
        line = page.evaluate("parseFloat(getComputedStyle(document.body).lineHeight) || 20")
        # Subject names in the grid wrap at words, never one letter per line.
        for cell in page.query_selector_all("table.grid tbody th"):
            box = cell.bounding_box()
            assert box is not None and box["width"] >= 100, (width, cell.inner_text(), box)
        # The run's cost and date each stay on one line in the header.
        for key in ("cost", "created"):
            dd = page.query_selector(f".meta .nowrap:has(dt:text-is('{key}')) dd")
            assert dd is not None, key
            box = dd.bounding_box()
            assert box is not None and box["height"] < 2 * line, (width, key, box)
        # A jump to a result or a subject leaves its heading below the sticky filter bar.
        for selector in ("details.result", "section.subject"):
            anchor = page.query_selector_all(selector)[-2].get_attribute("id")
            page.evaluate(f"location.hash = {anchor!r}")
            bar = page.query_selector("nav.bar").bounding_box()
            target = page.query_selector(f"[id={anchor!r}]").bounding_box()
            assert bar is not None and target is not None
            assert target["y"] >= bar["y"] + bar["height"] - 1, (width, selector, bar, target)
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.evaluate("location.hash = ''; window.scrollTo(0, 0)")


def test_xfail_and_skip_look_different(demo_page: Page) -> None:
    colors = demo_page.page.evaluate(
        "['--xfail', '--skip'].map(v => getComputedStyle(document.body).getPropertyValue(v))"
    )
    xfail, skip = (bytes.fromhex(c.strip().lstrip("#")) for c in colors)
    distance = sum((a - b) ** 2 for a, b in zip(xfail, skip)) ** 0.5
    assert distance > 100, colors  # the old grey-blue against grey was 46 apart
