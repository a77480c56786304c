"""The search's HTML page: the validation metric against each hyperparameter (log axes for
log ranges, one colour per stage, the best marked, pruned trials where they stopped), the
loss curves of the best trials, each stage's ranges and why, and the command that resumes.

Rendered from ``result.to_dict()`` through the autoescaping Jinja2 template
``search.html``: every user string (param names, choices, failure messages, the storage
URL) reaches the page escaped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nndiag.report import _environment
from nndiag.report.plots import (
    ACCENT,
    COLORS,
    FONT,
    MUTED,
    Plot,
    _figure,
    _log_scale,
    _style,
    _tick_label,
    figure_to_data_uri,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from nndiag.tuning.result import SearchResult

__all__ = ["render_search_html", "write_search_html"]

TEMPLATE = "search.html"
# One colour per stage, coarse to fine.
STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")
BEST_CURVES = 3
TABLE_ROWS = 300


@dataclass(frozen=True)
class TrialRow:
    stage: int
    number: int
    state: str
    value: str
    params: str
    steps: int
    passes: str
    reason: str


def render_search_html(result: SearchResult) -> str:
    """The page of ``result`` as HTML source."""
    from nndiag.tuning.result import SearchResult

    data = result.to_dict()
    result = SearchResult.from_dict(data)  # what a re-read JSON file would give
    trials = sorted(result.trials, key=lambda t: (t.stage, t.number))
    rows = [
        TrialRow(
            t.stage,
            t.number,
            t.state,
            "" if t.value is None else f"{t.value:.4g}",
            ", ".join(f"{k}={_value(v)}" for k, v in t.params.items()),
            t.steps,
            f"{t.passes[0]} / {t.passes[1]}",
            t.reason,
        )
        for t in trials[:TABLE_ROWS]
    ]
    ranges = [
        {
            "stage": r.stage,
            "trials": r.trials,
            "steps": r.steps,
            "why": r.why,
            "params": [(name, _range_text(d)) for name, d in r.params.items()],
        }
        for r in result.ranges
    ]
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            result=result,
            counts=result.counts(),
            best=", ".join(f"{k}={_value(v)}" for k, v in result.best_params.items()),
            best_value="n/a" if result.best_value is None else f"{result.best_value:.4g}",
            plots=_plots(result),
            ranges=ranges,
            rows=rows,
            more=max(0, len(trials) - TABLE_ROWS),
        )
    )


def write_search_html(result: SearchResult, path: str | os.PathLike[str]) -> Path:
    """Write the page of ``result`` to ``path`` (creating folders); returns the path."""
    path = Path(path)
    html = render_search_html(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _range_text(described: Mapping[str, Any]) -> str:
    if described.get("kind") == "choice":
        return "one of " + ", ".join(map(str, described.get("options", [])))
    scale = "log" if described.get("kind") == "log" else "uniform"
    return f"{described.get('low', 0):.3g} .. {described.get('high', 0):.3g} ({scale})"


def _plots(result: SearchResult) -> list[Plot]:
    plots = []
    for name, alt, fig in _drawn(result):
        try:
            plots.append(Plot(alt=alt, uri=figure_to_data_uri(fig)))
        except Exception as exc:  # a plot that cannot be drawn says so; the page stays
            plots.append(Plot(alt=alt, note=f"plot of {name} unavailable ({exc})"))
    return plots


def _drawn(result: SearchResult) -> list[tuple[str, str, Figure]]:
    figures = []
    names = list(result.ranges[0].params) if result.ranges else []
    for name in names:
        figures.append((name, f"{result.metric} against {name}", _against(result, name)))
    curves = _curves(result)
    if curves is not None:
        figures.append(("loss", "training loss of the best trials", curves))
    return figures


def _against(result: SearchResult, name: str) -> Figure:
    """The metric against one hyperparameter: a dot per complete trial, an x per pruned
    one at its last measured value (or on the worst edge, when it stopped before any)."""
    kind = result.ranges[0].params[name].get("kind")
    fig = _figure(4.4, 2.6, left=0.7, bottom=0.5)
    ax = fig.subplots()
    _style(ax)
    measured = [t.value for t in result.trials if t.value is not None and math.isfinite(t.value)]
    floor = min(measured) if measured else 0.0
    ceiling = max(measured) if measured else 1.0
    margin = 0.08 * (ceiling - floor or 1.0)
    # A trial pruned before any measurement sits on the worst edge of the plot.
    worst = floor - margin if result.direction == "maximize" else ceiling + margin
    options: list[Any] = []
    if kind == "choice":
        options = list(result.ranges[0].params[name].get("options", []))

    def x(value: Any) -> float:
        return float(options.index(value)) if kind == "choice" else float(value)

    for stage in sorted({t.stage for t in result.trials}):
        color = STAGE_COLORS[stage % len(STAGE_COLORS)]
        done = [
            t
            for t in result.trials
            if t.stage == stage and t.state == "complete" and t.value is not None
        ]
        cut = [t for t in result.trials if t.stage == stage and t.state == "pruned"]
        ax.scatter(
            [x(t.params[name]) for t in done if name in t.params],
            [float(t.value or 0.0) for t in done if name in t.params],
            s=14,
            color=color,
            label=f"stage {stage + 1}",
            zorder=3,
        )
        ax.scatter(
            [x(t.params[name]) for t in cut if name in t.params],
            [worst if t.value is None else t.value for t in cut if name in t.params],
            s=16,
            marker="x",
            color=color,
            linewidths=1,
            zorder=3,
        )
    best = next(
        (t for t in result.trials if t.state == "complete" and t.params == result.best_params),
        None,
    )
    if best is not None and name in best.params and best.value is not None:
        ax.scatter(
            [x(best.params[name])],
            [best.value],
            s=90,
            marker="*",
            color=COLORS["warn"],
            edgecolors="#5b4600",
            linewidths=0.6,
            zorder=4,
            label="best",
        )
    if kind == "log":
        _log_scale(ax.xaxis)
    elif kind == "choice":
        ax.set_xticks(range(len(options)), [str(o) for o in options])
    ax.set_xlabel(name + (" (log)" if kind == "log" else ""), fontsize=FONT)
    ax.set_ylabel(result.metric, fontsize=FONT)
    ax.text(
        1.0,
        1.0,
        "x: pruned (at its last measurement, or the worst edge)",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=FONT - 2,
        color=MUTED,
    )
    ax.legend(fontsize=FONT - 1, frameon=False, loc="best")
    return fig


def _curves(result: SearchResult) -> Figure | None:
    complete = [t for t in result.trials if t.state == "complete" and t.value is not None]
    complete.sort(key=lambda t: t.value or 0.0, reverse=result.direction == "maximize")
    best = [t for t in complete[:BEST_CURVES] if t.losses]
    if not best:
        return None
    fig = _figure(4.4, 2.6, left=0.7, bottom=0.5)
    ax = fig.subplots()
    _style(ax)
    values = [v for t in best for v in t.losses if math.isfinite(v)]
    if values and min(values) > 0:
        _log_scale(ax.yaxis)
    for rank, trial in enumerate(best):
        steps = [i * trial.loss_every for i in range(len(trial.losses))]
        shown = ", ".join(
            f"{k}={_tick_label(float(f'{v:.2g}')) if isinstance(v, float) else v}"
            for k, v in trial.params.items()
        )
        ax.plot(
            steps,
            trial.losses,
            lw=1.2,
            color=ACCENT if rank == 0 else _grey(rank),
            label=f"stage {trial.stage + 1} #{trial.number}: {shown}"[:60],
        )
    ax.set_xlabel("step", fontsize=FONT)
    ax.set_ylabel("training loss", fontsize=FONT)
    ax.legend(fontsize=FONT - 2, frameon=False)
    return fig


def _grey(rank: int) -> str:
    return ("#6b7280", "#a3a9b3", "#c5c9d0")[min(rank - 1, 2)]
