from __future__ import annotations

import base64
import math
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import report_synthetic as synthetic

from nndiag.report import format_value, plots, render_html, write_html
from nndiag.results import STATUSES, CheckResult, Cost, Report

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def sections(html: str) -> dict[str, str]:
    """Each result's HTML, keyed by its anchor id."""
    parts = re.split(r'(?=<details class="result)', html)[1:]
    found = {}
    for part in parts:
        anchor = re.search(r'<details class="result[^"]*" id="([^"]+)"', part)
        assert anchor, part[:200]
        found[anchor.group(1)] = part.split("</details>")[0]
    return found


def one(check: str, status: str = "pass", **kwargs) -> Report:
    return Report(
        [CheckResult(check, status, f"{check} {status}", subject="net", **kwargs)],
        meta=synthetic.META,
    )


# --------------------------------------------------------------------------- the page


def test_page_is_self_contained(demo_html: str) -> None:
    tags = Elements(demo_html).tags
    for tag, attrs in tags:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        if tag in ("img", "script"):
            src = attrs.get("src")
            assert tag == "img" or src is None, "scripts are inline"
            assert src is None or src.startswith("data:image/png;base64,"), src
        href = attrs.get("href")
        assert href is None or href.startswith("#"), href
    assert "http://" not in demo_html and "https://" not in demo_html
    assert "@import" not in demo_html and "url(" not in demo_html
    images = IMG.findall(demo_html)
    assert len(images) >= 10
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")


def test_header_shows_environment_and_verdict(demo_report: Report, demo_html: str) -> None:
    text = " ".join(Elements(demo_html).text)
    assert "FAILED" in text and not demo_report.passed
    for name in demo_report.subjects:
        assert name in text
    for fact in ("torch 2.13.0", "numpy 2.4.6", "3.11.2", "0.1.0", "2025-01-31 12:00:00 UTC"):
        assert fact in text, fact
    assert re.search(r"<dt>seed</dt><dd>0</dd>", demo_html)


def test_passing_report_says_passed() -> None:
    html = render_html(one("initial_loss", "pass"))
    assert 'class="verdict pass"' in html and "PASSED" in html


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_renders(status: str) -> None:
    html = render_html(
        Report([synthetic.result("net", "dead_neurons", status)], meta=synthetic.META)
    )
    (section,) = sections(html).values()
    assert f'data-status="{status}"' in section
    assert f'<span class="badge st-{status}">{status}</span>' in section
    assert f'<td class="cell st-{status}"><a href="#net::dead_neurons"' in html
    assert f'data-filter="{status}" aria-pressed="false">' in html  # enabled: one result
    assert ("FAILED" in html) == (status in ("fail", "error"))


def test_grid_cells_link_to_result_sections(demo_report: Report, demo_html: str) -> None:
    tags = Elements(demo_html).tags
    ids = {attrs["id"] for _, attrs in tags if attrs.get("id")}
    links = [attrs["href"] for tag, attrs in tags if tag == "a" and attrs.get("href")]
    # A link per grid cell, per subject, per row of the durations table and per result
    # that needs attention.
    loud = sum(r.state in ("error", "fail", "xpass", "warn") for r in demo_report)
    assert len(links) == 2 * len(demo_report) + len(demo_report.subjects) + loud
    for href in links:
        assert href[1:] in ids, href
    assert len(sections(demo_html)) == len(demo_report)


def test_grid_is_subject_by_check(demo_report: Report, demo_html: str) -> None:
    grid = demo_html.split('<table class="grid">')[1].split("</table>")[0]
    rows = re.findall(r"<tr class=\"filterable[^\"]*\">(.*?)</tr>", grid, re.DOTALL)
    assert len(rows) == len(demo_report.subjects)
    for row in rows:
        assert row.count('<td class="cell') == len(demo_report.checks)
    # ConvNet ran two checks more than the others: those columns are "not run" for them.
    assert grid.count("not run") == 2 * 2


def test_failing_results_start_open_and_passing_closed(demo_html: str) -> None:
    for section in sections(demo_html).values():
        status = re.search(r'data-status="(\w+)"', section).group(1)
        opened = re.match(r"<details[^>]*\sopen>", section) is not None
        assert opened == (status in ("fail", "warn", "error")), section[:120]


def test_result_shows_message_hint_metrics_thresholds_and_cost() -> None:
    result = synthetic.result("net", "dead_neurons", "fail")
    html = render_html(Report([result], meta=synthetic.META))
    (section,) = sections(html).values()
    assert result.message.replace("%", "%") in section
    assert f"<strong>Hint</strong>{result.hint}" in section
    assert "<tr><th>max_dead_fraction</th><td>0.93</td></tr>" in section
    assert '<tr class="limit"><th>warn</th><td>0.5</td></tr>' in section
    assert "cost: 1 forward \u00b7 0 backward \u00b7 0.03 s" in section
    assert section.count("<img") == 1
    assert "<figcaption>layers" in section  # the per-layer table


def test_evidence_thresholds_show_when_metrics_lack_them() -> None:
    html = render_html(
        one(
            "dead_neurons",
            metrics={"max_dead_fraction": 0.2},
            evidence={"layers": [], "warn": 0.5, "fail": 0.7},
        )
    )
    assert '<tr class="limit"><th>warn</th><td>0.5</td></tr>' in html
    assert '<tr class="limit"><th>fail</th><td>0.7</td></tr>' in html


def test_every_known_check_draws_its_plots(demo_report: Report) -> None:
    expected = {"activation_stats": 2}
    for result in demo_report:
        if result.check in plots.PLOTTERS and result.evidence:
            drawn = plots.plots_for(result)
            assert all(p.uri and not p.note for p in drawn), (result.check, drawn)
            assert len(drawn) == expected.get(result.check, 1), result.check


def test_unknown_check_gets_metrics_only() -> None:
    html = render_html(
        one("my_custom_check", metrics={"loss": 1.5, "steps": 3}, evidence={"series": [1, 2, 3]})
    )
    (section,) = sections(html).values()
    assert "<img" not in section and "plot unavailable" not in section
    assert "<tr><th>loss</th><td>1.5</td></tr>" in section


def test_empty_evidence_gets_no_plot() -> None:
    (section,) = sections(render_html(one("gradient_check", "error"))).values()
    assert "<img" not in section and 'class="figures' not in section


def test_counterexample_is_shown_verbatim() -> None:
    example = "Falsifying example: f(\n    x=array([[0., 1.]]),  # <b>\n)"
    html = render_html(one("permutation_invariance", "fail", evidence={"counterexample": example}))
    escaped = example.replace("<", "&lt;").replace(">", "&gt;")
    assert f'<pre class="counterexample">{escaped}</pre>' in html


def test_a_plot_that_raises_becomes_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(evidence):
        raise RuntimeError("<boom>")

    monkeypatch.setitem(plots.PLOTTERS, "initial_loss", broken)
    report = Report(
        [
            synthetic.result("net", "initial_loss", "fail"),
            synthetic.result("net", "dead_neurons", "fail"),
        ],
        meta=synthetic.META,
    )
    html = render_html(report)
    first, second = sections(html).values()
    assert "plot unavailable (RuntimeError: &lt;boom&gt;)" in first and "<img" not in first
    assert "<img" in second  # the other results keep their plots


NONFINITE = [math.nan, math.inf, -math.inf, None]


@pytest.mark.parametrize("bad", NONFINITE, ids=["nan", "inf", "-inf", "none"])
@pytest.mark.parametrize("check", sorted(synthetic.BUILDERS))
def test_nonfinite_values_in_evidence_still_plot(check: str, bad: float | None) -> None:
    """Every number replaced by NaN/inf/None: plots draw (with gaps) or are left out."""
    result = synthetic.result("net", check, "fail")

    def spoil(value, depth=0):
        if isinstance(value, dict):
            # Keep one key per record intact so the layout code still runs.
            return {k: (v if k == "name" else spoil(v, depth + 1)) for k, v in value.items()}
        if isinstance(value, list):
            return [spoil(v, depth + 1) if i % 2 == 0 else v for i, v in enumerate(value)]
        if isinstance(value, float):
            return bad
        return value

    spoiled = CheckResult(
        check, "fail", "spoiled", evidence=spoil(dict(result.evidence)), subject="net"
    )
    drawn = plots.plots_for(spoiled)
    assert all(p.note is None for p in drawn), drawn
    html = render_html(Report([spoiled], meta=synthetic.META))
    assert "spoiled" in html


MALFORMED = [
    {},
    {"measured": None, "expected": None, "band": None},
    {"measured": "NaN", "expected": [1, 2], "band": "wide", "warn_band": [1]},
    {"strengths": None, "losses": [1, 2]},
    {"strengths": [0, 1], "losses": [math.nan, math.inf]},
    {"loss": [], "accuracy": None, "target_loss": None},
    {"loss": [math.inf, math.nan], "accuracy": [None, 2]},
    {"tensors": [{"name": None}], "bands": "no"},
    {"tensors": [{"name": "w", "rel_error": 0.0}, {"rel_error": -1}, 5, "x"]},
    {"layers": [{}], "warn": None},
    {"layers": [{"name": "l", "hist_counts": [1, 2], "hist_edges": [1, 1], "depth": "x"}]},
    {"layers": None, "coordinates": {"a": 1}},
    {"layers": "relu"},
    {"counterexample": 12},
]


@pytest.mark.parametrize("evidence", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_evidence_never_breaks_the_page(evidence: dict) -> None:
    results = [
        CheckResult(
            check,
            "warn",
            "odd evidence",
            evidence=evidence,
            subject="net",
            metrics={"x": math.nan, "y": [math.inf, None], "z": {"a": None}},
        )
        for check in synthetic.BUILDERS
    ]
    html = render_html(Report(results, meta=synthetic.META))
    assert len(sections(html)) == len(results)
    # A NaN metric reads "undefined", never a raw NaN.
    assert ">undefined<" in html and "\u221e" in html
    assert ">NaN<" not in html


def test_missing_meta_and_costs_render() -> None:
    report = Report([CheckResult("initial_loss", "skip", "no data", subject="")], meta={})
    html = render_html(report)
    assert "(unnamed)" in html and "none recorded" in html


def test_empty_report_renders() -> None:
    html = render_html(Report([], meta={}))
    assert "holds no results" in html and "PASSED" in html


def test_multiple_results_for_one_cell_show_the_worst() -> None:
    report = Report(
        [
            CheckResult("initial_loss", "pass", "a", subject="net"),
            CheckResult("initial_loss", "fail", "b", subject="net"),
        ],
        meta=synthetic.META,
    )
    html = render_html(report)
    assert '<td class="cell st-fail"><a href="#net::initial_loss~"' in html
    assert len(sections(html)) == 2


def test_rendering_is_deterministic(demo_report: Report, demo_html: str) -> None:
    assert render_html(demo_report) == demo_html


def test_live_values_render_like_their_json(tmp_path) -> None:
    """Tuples and ints-as-floats are normalised through the JSON document first."""
    live = Report(
        [
            CheckResult(
                "dead_neurons",
                "warn",
                "m",
                subject="net",
                metrics={"shape": (3, 4)},
                cost=Cost(1, 2, 0.5),
                evidence={
                    "layers": ({"name": "a", "dead_fraction": 0.6},),
                    "warn": 0.5,
                    "fail": 0.7,
                },
            )
        ],
        meta=synthetic.META,
    )
    path = live.to_json(tmp_path / "r.json")
    from nndiag import load_report

    assert render_html(load_report(path)) == render_html(live)


def test_write_html_creates_folders_and_returns_path(tmp_path, demo_report: Report) -> None:
    target = tmp_path / "a" / "b" / "page.html"
    written = demo_report.to_html(target)
    assert written == target and target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert write_html(demo_report, str(target)) == target


# --------------------------------------------------------------------------- escaping


def test_hostile_strings_are_escaped_everywhere(hostile_html: str) -> None:
    for raw in synthetic.HOSTILE:
        assert raw not in hostile_html
    assert hostile_html.count("<script") == 1  # the page's own filter script
    assert "<img src=x" not in hostile_html
    assert re.search(r"<img(?![^>]*src=\"data:image/png;base64,)", hostile_html) is None
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile_html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in hostile_html


def test_hostile_strings_survive_as_text(hostile_report: Report, hostile_html: str) -> None:
    text = "".join(Elements(hostile_html).text)
    for raw in synthetic.HOSTILE:
        assert raw in text  # escaped in the source, shown literally by a browser
    attributes = [v for _, attrs in Elements(hostile_html).tags for v in attrs.values() if v]
    assert synthetic.HOSTILE[1] in " ".join(attributes)  # titles hold the literal string too


def test_hostile_layer_names_still_plot(hostile_report: Report) -> None:
    for result in hostile_report:
        assert all(p.note is None for p in plots.plots_for(result)), result.check


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "\u2014"),
        (True, "true"),
        (3, "3"),
        (0.0, "0"),
        (2.0, "2"),
        (0.25, "0.25"),
        (1e-7, "1e-7"),
        (3.14159e-5, "3.14e-5"),
        (2.302585, "2.303"),
        (1.5e10, "1.5e10"),
        (math.nan, "undefined"),
        (math.inf, "\u221e"),
        (-math.inf, "\u2212\u221e"),
        ([1, 2.5], "[1, 2.5]"),
        ({"a": 1e-7}, "{a: 1e-7}"),
        ("<b>", "<b>"),
        (list(range(10)), "[0, 1, 2, 3, 4, 5, 6, 7, \u2026 10 items]"),
    ],
)
def test_format_value(value, text: str) -> None:
    assert format_value(value) == text


def test_format_value_truncates() -> None:
    assert len(format_value("x" * 1000)) == 240


# --------------------------------------------------------------------------- imports


def test_importing_nndiag_and_rendering_never_touch_pyplot() -> None:
    code = (
        "import sys, nndiag, nndiag.report, nndiag.cli\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported early'\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import report_synthetic\n"
        "nndiag.report.render_html(report_synthetic.demo_report())\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    from pathlib import Path

    folder = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", code, folder], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_failures_come_first_in_one_line_each(demo_report: Report, demo_html: str) -> None:
    part = demo_html.split('<section class="card" id="attention">')[1].split("</section>")[0]
    rows = re.findall(r"<tr><td>(.*?)</td><td><a href=\"#(.*?)\">.*?st-(\w+)", part)
    states = [state for _, _, state in rows]
    loud = [r for r in demo_report if r.state in ("error", "fail", "xpass", "warn")]
    assert len(rows) == len(loud)
    order = {"error": 0, "fail": 1, "xpass": 1, "warn": 2}
    assert states == sorted(states, key=order.__getitem__)
    ids = {a["id"] for _, a in Elements(demo_html).tags if a.get("id")}
    assert all(anchor in ids for _, anchor, _ in rows)
    calm = render_html(Report([r for r in demo_report if r.state in ("pass", "skip")]))
    assert 'id="attention"' not in calm


def test_a_subjects_dot_does_not_depend_on_result_order() -> None:
    from nndiag.report import _worst

    assert _worst(["pass", "xfail"]) == _worst(["xfail", "pass"]) == "xfail"
    assert _worst(["xfail", "warn"]) == "warn" and _worst(["skip", "pass"]) == "pass"


def test_a_limit_is_listed_once_whatever_its_names() -> None:
    import torch
    from torch import nn

    import nndiag

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    X, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    report = nndiag.diagnose(nndiag.Subject(model, (X, y)), ["dead_neurons"], progress=False)
    html = render_html(report)
    part = html.split('id="dead_neurons"')[-1] if 'id="dead_neurons"' in html else html
    limits = re.findall(r'<tr class="limit"><th>(.*?)</th><td>(.*?)</td>', part)
    values = [value for _, value in limits]
    assert limits and len(values) == len(set(values)), limits


def test_a_band_shown_by_its_ends_is_not_listed_again() -> None:
    metrics = {"measured": 1.3, "band_low": 1.08, "band_high": 1.1}
    result = CheckResult("initial_loss", "pass", "ok", metrics, {"band": [1.08, 1.1]}, subject="m")
    limits = re.findall(r'<tr class="limit"><th>(.*?)</th>', render_html(Report([result])))
    assert limits == ["band_low", "band_high"]
    alone = CheckResult("initial_loss", "pass", "ok", {"measured": 1.3}, {"band": [1, 2]})
    assert "<th>band</th>" in render_html(Report([alone]))


def test_the_first_sentence_keeps_abbreviations_and_stale_failures_follow() -> None:
    import dataclasses

    from nndiag.report import _first_sentence

    hint = "Use the cross-entropy of (e.g. logits, labels) as it is. Then rerun."
    assert _first_sentence(hint) == "Use the cross-entropy of (e.g. logits, labels) as it is."
    assert _first_sentence("Std 0.5. Next.") == "Std 0.5."
    fresh = CheckResult("initial_loss", "pass", "ok", subject="a")
    kept = dataclasses.replace(
        CheckResult("gradient_check", "fail", "wrong. More.", subject="a"), stale=True
    )
    html = render_html(Report([fresh, kept]))
    part = html.split('id="attention"')[1].split("</section>")[0]
    assert "gradient_check" in part and '<span class="stale">stale</span>' in part
