"""Plots of check evidence: matplotlib ``Figure`` objects on the Agg canvas, as PNG data URIs.

Every function here reads a result's ``evidence`` mapping (see each plotter for the keys it
uses) and tolerates missing keys, ``None`` and non-finite numbers. No pyplot and no rcParams
changes: a user's global matplotlib state is neither read for layout nor modified, and
matplotlib is imported only when a plot is drawn, so importing nndiag stays cheap.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from nndiag.results import CheckResult

__all__ = ["PLOTTERS", "Plot", "figure_to_data_uri", "plots_for"]

logger = logging.getLogger(__name__)

# Small images: a report holds hundreds of them and each costs draw time and bytes.
DPI = 90
FONT = 8
# Figures wider than this get a row of their own on the page.
WIDE_INCHES = 6.5

# Same palette as the page's CSS, so a bar and its badge agree.
COLORS = {
    "pass": "#2e7d32",
    "warn": "#e0a100",
    "fail": "#c62828",
    "skip": "#8a8f98",
    "error": "#7b1fa2",
}
TINT = {"pass": "#e3f1e4", "warn": "#fbf0cf", "fail": "#f8dcdc"}
INK = "#1f2430"
MUTED = "#6b7280"
ACCENT = "#1f5fbf"
KIND_COLORS = {"relu": "#1f77b4", "tanh": "#ff7f0e", "sigmoid": "#9467bd"}


@dataclass(frozen=True)
class Plot:
    """One rendered plot: a PNG data URI and its alt text, or a note saying why there is none."""

    alt: str
    uri: str | None = None
    note: str | None = None
    wide: bool = False  # drawn across the whole result card rather than beside its metrics


Plotter = Callable[[Mapping[str, Any]], "list[tuple[str, Figure]]"]


def _registered_plotter(check: str) -> Plotter | None:
    """The plotter of a check registered by a third party (nndiag's own are in PLOTTERS)."""
    from nndiag.checks import registry

    spec = registry().get(check)
    return spec.plotter() if spec is not None else None


def plots_for(result: CheckResult) -> list[Plot]:
    """Draw the plots for one check result; never raises.

    Args:
        result: A check result; its ``check`` id selects the plotter in :data:`PLOTTERS`.

    Returns:
        The plots, in display order. Empty when the evidence is empty or the check id has
        no plotter; a single note-only :class:`Plot` when drawing failed.
    """
    evidence = result.evidence
    plotter = PLOTTERS.get(result.check) or _registered_plotter(result.check)
    if not evidence or plotter is None:
        return []
    try:
        with warnings.catch_warnings():
            # Overflow and "non-positive limit" warnings say nothing a reader of the page
            # could act on; the numbers themselves are in the metrics table.
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            return [
                Plot(
                    alt=alt,
                    uri=figure_to_data_uri(fig),
                    wide=bool(fig.get_figwidth() > WIDE_INCHES),
                )
                for alt, fig in plotter(evidence)
            ]
    except Exception as exc:  # a bad evidence value must cost one plot, not the page
        logger.debug("plot for %s/%s failed", result.subject, result.check, exc_info=True)
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(reason) > 160:
            reason = reason[:157] + "..."
        return [Plot(alt=f"{result.check} plot", note=f"plot unavailable ({reason})")]


def figure_to_data_uri(fig: Figure) -> str:
    """Render ``fig`` with the Agg canvas and return it as a ``data:image/png;base64`` URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software" chunk: the bytes then depend only on the evidence, not the version.
    canvas.print_png(buffer, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- helpers


def _figure(
    width: float,
    height: float,
    *,
    left: float = 0.55,
    bottom: float = 0.42,
    right: float = 0.15,
    top: float = 0.12,
    wspace: float = 0.3,
) -> Figure:
    """A figure with fixed margins in inches (constrained layout would double the draw time)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace,
    )
    return fig


def _label_inches(labels: Sequence[str], size: float) -> float:
    """Rough width of the widest label, for the margin that holds tick labels."""
    return 0.15 + 0.6 * size / 72 * max((len(label) for label in labels), default=0)


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric and non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(values: Any) -> list[float]:
    """Floats with NaN standing for every missing or non-finite entry (a gap in a line)."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        return []
    return [math.nan if (v := _number(x)) is None else v for x in values]


def _pair(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        return None
    lo, hi = _number(value[0]), _number(value[1])
    if lo is None or hi is None:
        return None
    return (lo, hi) if lo <= hi else (hi, lo)


def _records(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _label(value: Any, width: int = 28) -> str:
    """A user string made safe for a matplotlib label: shortened, ``$`` not read as math."""
    text = "" if value is None else str(value)
    if len(text) > width:
        text = text[: width - 1] + "\u2026"
    return text.replace("$", r"\$")


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        mantissa, _, power = f"{value:.2e}".partition("e")
        return f"{mantissa}e{int(power)}"
    return f"{value:.4g}"


def _short(value: float | None) -> str:
    return "n/a" if value is None else _tick_label(float(f"{value:.2g}"))


def _style(ax: Axes) -> None:
    ax.tick_params(labelsize=FONT - 1, length=2.5, colors=INK)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9aa0aa")


def _log_scale(axis: Any, scale: str = "log", **kwargs: Any) -> None:
    """A log axis labelled in plain text: the default mathtext labels triple the draw time."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    set_scale = axis.axes.set_xscale if axis.axis_name == "x" else axis.axes.set_yscale
    set_scale(scale, **kwargs)
    axis.set_major_formatter(FuncFormatter(_tick_label))
    # Minor ticks are unlabelled on a log axis but each one still costs a Tick to draw.
    axis.set_minor_locator(NullLocator())


def _tick_label(value: float, _position: Any = None) -> str:
    if value == 0:
        return "0"
    exponent = math.log10(abs(value))
    if abs(exponent) >= 3 and abs(exponent - round(exponent)) < 1e-9:
        return f"{'-' if value < 0 else ''}1e{round(exponent)}"
    mantissa, _, power = f"{value:g}".partition("e")
    return f"{mantissa}e{int(power)}" if power else mantissa


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


# --------------------------------------------------------------------------- plotters


def plot_initial_loss(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Measured initial loss against the expected one, on a number line with its bands.

    Regions take the colour of the verdict a measurement there gets: inside ``warn_band``
    pass, between ``warn_band`` and ``fail_band`` warn, outside ``fail_band`` fail; ``band``
    (the noise band around the expected value) is outlined.
    """
    measured = _number(evidence.get("measured"))
    expected = _number(evidence.get("expected"))
    band = _pair(evidence.get("band"))
    warn_band = _pair(evidence.get("warn_band"))
    fail_band = _pair(evidence.get("fail_band"))
    if measured is None and expected is None:
        return []
    fig = _figure(5.6, 1.6, left=0.15, right=0.2, top=0.3)
    ax = fig.subplots()
    _style(ax)
    ax.spines["left"].set_visible(False)
    ax.set_yticks([])

    # The view spans the bands; a measurement far outside is pinned to the edge with its value.
    span = [v for pair in (band, warn_band, fail_band) if pair for v in pair]
    span += [v for v in (expected,) if v is not None]
    if not span and measured is not None:
        span = [measured]
    lo, hi = min(span), max(span)
    width = hi - lo or max(abs(hi), 1.0) * 0.2
    view = (lo - 0.35 * width, hi + 0.35 * width)
    if measured is not None and abs(measured - (lo + hi) / 2) < 4 * width:
        view = (min(view[0], measured - 0.1 * width), max(view[1], measured + 0.1 * width))
    ax.set_xlim(*view)
    ax.set_ylim(0, 1)

    if fail_band:
        ax.set_facecolor(TINT["fail"])
        ax.axvspan(*fail_band, color=TINT["warn"], lw=0)
    if warn_band:
        ax.axvspan(*warn_band, color=TINT["pass"], lw=0)
    if band:
        ax.axvspan(
            *band,
            ymin=0.3,
            ymax=0.7,
            facecolor="none",
            edgecolor=COLORS["pass"],
            hatch="////",
            lw=0.8,
        )
    if expected is not None:
        ax.axvline(expected, color=INK, ls="--", lw=1)
        ax.text(
            expected,
            0.97,
            f" expected {_fmt(expected)}",
            va="top",
            ha="left",
            fontsize=FONT - 1,
            color=INK,
        )
    if measured is not None:
        x = min(max(measured, view[0]), view[1])
        pinned = x != measured
        marker = ">" if measured > view[1] else "<" if pinned else "D"
        ax.plot([x], [0.5], marker=marker, ms=9, color=ACCENT, ls="none", clip_on=False)
        ax.text(
            x,
            0.08,
            f"measured {_fmt(measured)}",
            ha="right" if x > sum(view) / 2 else "left",
            fontsize=FONT,
            color=ACCENT,
            weight="bold",
        )
    else:
        ax.text(
            0.02,
            0.4,
            "measured: not finite",
            transform=ax.transAxes,
            fontsize=FONT,
            color=COLORS["fail"],
            weight="bold",
        )
    ax.set_xlabel("initial loss", fontsize=FONT)
    judged = evidence.get("judged_on")
    if isinstance(judged, Mapping) and judged.get("status") in COLORS:
        # A verdict on something else than where the loss lies: say so on the plot.
        status = str(judged["status"])
        cause = _label(str(judged.get("cause", "")), 60)
        ax.text(
            0.01,
            1.22,
            f"{status.upper()}: {cause}, not its place in the bands",
            transform=ax.transAxes,
            fontsize=FONT - 1,
            color=COLORS[status],
            weight="bold",
            va="bottom",
        )
    if band or warn_band or fail_band:
        from matplotlib.patches import Patch

        handles = [Patch(color=TINT[s], label=f"{s} region") for s in ("pass", "warn", "fail")]
        if band:
            handles.append(
                Patch(facecolor="none", edgecolor=COLORS["pass"], hatch="////", label="noise band")
            )
        ax.legend(
            handles=handles,
            fontsize=FONT - 2,
            loc="lower right",
            frameon=False,
            ncols=len(handles),
            bbox_to_anchor=(1, 0.98),
            borderaxespad=0,
            handlelength=1.4,
        )
    return [("initial loss: measured against expected, with the pass/warn bands", fig)]


def plot_regularization_loss(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Loss against regularization strength (symlog x: the sweep starts at 0)."""
    strengths = _series(evidence.get("strengths"))
    losses = _series(evidence.get("losses"))
    points = [(s, v) for s, v in zip(strengths, losses) if math.isfinite(s) and math.isfinite(v)]
    if not points:
        return []
    fig = _figure(4.2, 2.3, left=0.62, bottom=0.45)
    ax = fig.subplots()
    _style(ax)
    xs, ys = zip(*points)
    positive = [abs(s) for s in xs if s != 0]
    _log_scale(ax.xaxis, "symlog", linthresh=min(positive) if positive else 1.0)
    if min(ys) > 0 and max(ys) / min(ys) > 50:
        _log_scale(ax.yaxis)
    ax.plot(xs, ys, marker="o", ms=4, color=ACCENT, lw=1.4)
    for x, y in points:
        ax.annotate(
            _fmt(y),
            (x, y),
            textcoords="offset points",
            xytext=(3, 5),
            fontsize=FONT - 2,
            color=MUTED,
        )
    dropped = len(strengths) - len(points)
    if dropped > 0:
        ax.text(
            0.02,
            0.95,
            f"{dropped} non-finite point(s) not shown",
            transform=ax.transAxes,
            va="top",
            fontsize=FONT - 1,
            color=COLORS["fail"],
        )
    ax.set_xlabel("regularization strength", fontsize=FONT)
    ax.set_ylabel("loss", fontsize=FONT)
    return [("loss against regularization strength", fig)]


def plot_overfit_small(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Training loss per step (log y where possible) and, when recorded, training accuracy."""
    loss = _series(evidence.get("loss"))
    accuracy = _series(evidence.get("accuracy"))
    target = _number(evidence.get("target_loss"))
    has_accuracy = bool(_finite(accuracy))
    if not _finite(loss) and not has_accuracy:
        return []
    fig = _figure(6.2 if has_accuracy else 4.2, 2.3, left=0.62, bottom=0.45, wspace=0.38)
    axes = fig.subplots(1, 2 if has_accuracy else 1, squeeze=False)[0]
    ax = axes[0]
    _style(ax)
    finite = _finite(loss)
    if finite and min(finite) > 0 and (target is None or target > 0):
        _log_scale(ax.yaxis)
    ax.plot(range(len(loss)), loss, color=ACCENT, lw=1.3, label="loss")
    if target is not None:
        ax.axhline(target, color=COLORS["pass"], ls="--", lw=1, label=f"target {_fmt(target)}")
    bad = next((i for i, v in enumerate(loss) if not math.isfinite(v)), None)
    if bad is not None:
        ax.axvline(bad, color=COLORS["fail"], lw=1, ls=":")
        ax.text(
            bad,
            0.5,
            f" non-finite from step {bad}",
            transform=ax.get_xaxis_transform(),
            fontsize=FONT - 1,
            color=COLORS["fail"],
        )
    ax.set_xlabel("step", fontsize=FONT)
    ax.set_ylabel("training loss", fontsize=FONT)
    ax.legend(fontsize=FONT - 1, frameon=False)
    if has_accuracy:
        ax = axes[1]
        _style(ax)
        top = 100.0 if max(_finite(accuracy)) > 1.0 + 1e-9 else 1.0
        ax.plot(range(len(accuracy)), accuracy, color=COLORS["pass"], lw=1.3)
        ax.set_ylim(-0.03 * top, 1.05 * top)
        ax.set_xlabel("step", fontsize=FONT)
        ax.set_ylabel("training accuracy", fontsize=FONT)
    return [("training loss and accuracy per step on the small subset", fig)]


# CS231n notes on relative error: > 1e-2 usually wrong, 1e-2..1e-4 uncomfortable,
# < 1e-4 fine with kinks, < 1e-7 happy.
_GRAD_BANDS = {"good": 1e-7, "kinks_ok": 1e-4, "wrong": 1e-2}
_ZERO_FLOOR = 1e-16  # an exact match (0) is drawn here: log axes have no 0
_MAX_BARS = 40


def plot_gradient_check(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Relative error per tensor, horizontal bars on a log axis over the lecture's bands."""
    tensors = _records(evidence.get("tensors"))
    if not tensors:
        return []
    screened = not any("rel_error" in t or t.get("no_grad") for t in tensors)
    if screened:  # the screens passed: no tensor has a difference of its own
        tensors = _screen_rows(evidence, len(tensors)) or tensors
    shown = tensors[:_MAX_BARS]
    bands = dict(_GRAD_BANDS)
    given = evidence.get("bands")
    if isinstance(given, Mapping):
        bands.update({k: v for k in _GRAD_BANDS if (v := _number(given.get(k))) and v > 0})
    raw = [t.get("rel_error") for t in shown]
    errors = [_number(v) for v in raw]
    finite = [e for e in errors if e is not None and e > 0]
    left = min([1e-10, *(e / 5 for e in finite)])
    right = min(max([1.0, *(e * 5 for e in finite)]), 1e12)
    left = max(left, _ZERO_FLOOR)

    labels = [_label(t.get("name")) for t in shown]
    fig = _figure(
        5.8,
        1.05 + 0.24 * len(shown),
        left=_label_inches(labels, FONT - 1),
        bottom=0.45,
        top=0.22,
        right=0.2,
    )
    ax = fig.subplots()
    _style(ax)
    _log_scale(ax.xaxis)
    ax.set_xlim(left, right)
    edges = [left, bands["good"], bands["kinks_ok"], bands["wrong"], right]
    regions = [
        ("good", TINT["pass"]),
        ("kinks ok", "#eef5d9"),
        ("suspicious", TINT["warn"]),
        ("wrong", TINT["fail"]),
    ]
    decades = math.log10(right) - math.log10(left)

    def share(x: float) -> float:  # where x lies across the log axis, 0 to 1
        return (math.log10(x) - math.log10(left)) / decades if decades > 0 else 0.5

    for (name, color), lo, hi in zip(regions, edges, edges[1:]):
        if hi > lo:
            ax.axvspan(lo, hi, color=color, lw=0)
            if share(hi) - share(lo) < 0.1:  # too narrow for its name: it would spill over
                continue
            ax.text(
                math.sqrt(lo * hi),
                1.0,
                name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=FONT - 2,
                color=MUTED,
            )
    for key, status in (("warn", "warn"), ("fail", "fail")):
        value = _number(evidence.get(key))
        if value is not None and value > 0:
            ax.axvline(value, color=COLORS[status], ls="--", lw=1)
            # In the empty slot under the last bar, so the label never covers a bar.
            # warn's label left of its line, fail's right of it (they never cover each
            # other), either turned inward at the axis' edge.
            at = share(min(max(value, left), right))
            leftward = at > 0.75 or (key == "warn" and at > 0.25)
            ax.text(
                value,
                len(shown) - 0.1,
                f"{key} {_tick_label(value)} " if leftward else f" {key} {_tick_label(value)}",
                va="center",
                ha="right" if leftward else "left",
                fontsize=FONT - 2,
                color=COLORS[status],
            )

    ys = list(range(len(shown)))
    widths, colors, hatches = [], [], []
    for tensor, error in zip(shown, errors):
        verdict = tensor.get("status")
        colors.append(COLORS.get(verdict if isinstance(verdict, str) else "", MUTED))
        if error is None:  # NaN/inf/missing: a full-length hatched bar says "no number"
            widths.append(right)
            hatches.append("xx")
        else:
            widths.append(max(error, left))
            hatches.append("")
    bars = ax.barh(ys, [w - left for w in widths], left=left, height=0.62, color=colors)
    for bar, hatch, error, value, tensor in zip(bars, hatches, errors, raw, shown):
        cleared = "rel_error" not in tensor and not tensor.get("no_grad")
        if hatch and cleared:  # a group it belonged to passed: no number of its own
            bar.set_width(0)
            error = left
        elif hatch:
            bar.set_hatch(hatch)
            bar.set_alpha(0.45)
        text = _fmt(error) if error is not None else ("missing" if value is None else str(value))
        if cleared:
            text = "cleared with its group"
        elif error == 0:
            text = "0 (exact)"
        end = min(bar.get_width() + left, right)
        # Near the right edge the number goes inside the bar's end, not past the axis.
        inside = error is None or share(end) > 0.85
        ax.text(
            end,
            bar.get_y() + bar.get_height() / 2,
            f"{text} " if inside else f" {text}",
            va="center",
            ha="right" if inside else "left",
            fontsize=FONT - 2,
            color="white" if inside and not hatch else INK,
            clip_on=True,
        )
    ax.set_yticks(ys, labels)
    ax.set_ylim(len(shown) + 0.25, -0.6)
    ax.set_xlabel(
        "relative error |analytic - numeric| / max(|analytic|, |numeric|)", fontsize=FONT - 1
    )
    alt = "relative gradient error per tensor, log scale"
    if screened and tensors and "direction" in str(tensors[0].get("name")):
        alt = "relative gradient error of each whole-model screen, log scale"
    if len(tensors) > len(shown):
        alt += f" (first {len(shown)} of {len(tensors)} tensors)"
        ax.set_title(f"first {len(shown)} of {len(tensors)} tensors", fontsize=FONT, loc="left")
    return [(alt, fig)]


def _screen_rows(evidence: Mapping[str, Any], count: int) -> list[Mapping[str, Any]]:
    """One bar per whole-model screen (its best step's error), for a run that passed on
    the screens alone."""
    warn, fail = _number(evidence.get("warn")) or 0.0, _number(evidence.get("fail")) or 0.0
    rows: list[Mapping[str, Any]] = []
    for i, screen in enumerate(_records(evidence.get("screens")), start=1):
        tried = [_number(pair[1]) for pair in screen.get("errors") or () if len(pair) == 2]
        found = [e for e in tried if e is not None]
        if not found:
            continue
        error = min(found)
        status = "pass" if error <= warn else "warn" if error <= fail else "fail"
        rows.append(
            {"name": f"direction {i}, all {count} tensors", "rel_error": error, "status": status}
        )
    return rows


_MAX_HISTOGRAMS = 30
_PER_ROW = 10


def _ordered_layers(evidence: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    layers = _records(evidence.get("layers"))

    def depth(item: tuple[int, Mapping[str, Any]]) -> tuple[float, int]:
        value = _number(item[1].get("depth"))
        return (math.inf if value is None else value, item[0])

    return [layer for _, layer in sorted(enumerate(layers), key=depth)]


def plot_activation_stats(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """A row of per-layer activation histograms in depth order, and mean/std per depth.

    This is the figure of the CS231n weight-initialization slides: with a bad scale the
    histograms collapse to a spike at 0 or pile up at the tanh rails as depth grows.
    """
    import numpy as np

    layers = _ordered_layers(evidence)
    if not layers:
        return []
    plots: list[tuple[str, Figure]] = []

    # One Axes with a slot per layer: a grid of Axes would cost ~15 ms per layer to draw.
    shown = layers[:_MAX_HISTOGRAMS]
    cols = min(len(shown), _PER_ROW)
    rows = math.ceil(len(shown) / cols)
    fig = _figure(
        max(1.25 * cols, 6.6) + 0.1, 1.3 * rows, left=0.05, right=0.05, bottom=0.02, top=0.02
    )
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(0, max(cols, 6.6 / 1.25))  # few layers: keep slots at their usual size
    ax.set_ylim(-rows, 0)
    small = FONT  # 8 pt at 90 dpi: 10 px labels in the page, which shows the PNG unscaled
    for i, layer in enumerate(shown):
        row, col = divmod(i, cols)
        x0, x1 = col + 0.08, col + 0.92
        base, height = -(row + 1) + 0.14, 0.54
        counts = _series(layer.get("hist_counts"))
        edges = _pair(layer.get("hist_edges"))
        mean, std = _number(layer.get("mean")), _number(layer.get("std"))
        saturated = _number(layer.get("saturated"))
        ax.text(
            (x0 + x1) / 2,
            base + height + 0.03,
            f"{_label(layer.get('name'), 18)}\n\u03bc {_short(mean)}  \u03c3 {_short(std)}",
            ha="center",
            va="bottom",
            fontsize=small,
            color=INK,
            linespacing=1.35,
        )
        ax.plot([x0, x1], [base, base], color="#9aa0aa", lw=0.6)
        peak = max(_finite(counts), default=0.0)
        if edges and edges[1] > edges[0] and peak > 0:
            heights = np.nan_to_num(np.asarray(counts, dtype=float), nan=0.0, posinf=0.0)
            heights = base + height * np.clip(heights, 0.0, None) / peak
            kind = layer.get("kind")
            color = KIND_COLORS.get(kind if isinstance(kind, str) else "", MUTED)
            ax.stairs(
                heights,
                np.linspace(x0, x1, len(counts) + 1),
                baseline=base,
                fill=True,
                color=color,
                alpha=0.85,
            )
            ax.text(
                x0, base - 0.02, _short(edges[0]), ha="left", va="top", fontsize=small, color=MUTED
            )
            ax.text(
                x1, base - 0.02, _short(edges[1]), ha="right", va="top", fontsize=small, color=MUTED
            )
            if edges[0] < 0 < edges[1]:
                zero = x0 + (x1 - x0) * -edges[0] / (edges[1] - edges[0])
                ax.plot([zero, zero], [base, base - 0.04], color=MUTED, lw=0.6)
        else:
            ax.text(
                (x0 + x1) / 2,
                base + height / 2,
                "no histogram",
                ha="center",
                va="center",
                fontsize=small,
                color=MUTED,
            )
        if saturated is not None and saturated > 0.05:  # between the two range labels
            ax.text(
                (x0 + x1) / 2,
                base - 0.05,
                f"{saturated:.0%} sat.",
                ha="center",
                va="top",
                fontsize=small,
                color=COLORS["fail"],
                weight="bold",
            )
    alt = "activation histograms per layer in depth order"
    if len(layers) > len(shown):
        alt += f" (first {len(shown)} of {len(layers)} layers)"
    plots.append((alt, fig))

    means = [(_number(layer.get("mean"))) for layer in layers]
    stds = [(_number(layer.get("std"))) for layer in layers]
    if any(v is not None for v in means + stds):
        fig = _figure(5.6, 2.0, left=0.5, bottom=0.42, top=0.25, wspace=0.35)
        left, right = fig.subplots(1, 2)
        xs = list(range(1, len(layers) + 1))
        for ax, values, name in ((left, means, "mean"), (right, stds, "std")):
            _style(ax)
            ys = [math.nan if v is None else v for v in values]
            ax.plot(xs, ys, marker="o", ms=3.5, lw=1.2, color=ACCENT)
            positive = [v for v in values if v is not None]
            if (
                name == "std"
                and positive
                and min(positive) > 0
                and (max(positive) / min(positive) > 100)
            ):
                _log_scale(ax.yaxis)
            ax.set_title(f"layer {name}", fontsize=FONT, color=INK)
            ax.set_xlabel("layer (depth order)", fontsize=FONT - 1)
            ax.set_xticks(xs if len(xs) <= 12 else xs[:: math.ceil(len(xs) / 12)])
        plots.append(("activation mean and standard deviation per layer", fig))
    return plots


def _layer_rows(
    layers: Sequence[Mapping[str, Any]], *, row: float, top: float, right: float = 0.2
) -> tuple[Figure, Any, list[int]]:
    """A figure with one horizontal row per layer, its name as the row's label."""
    labels = [_label(layer.get("name")) for layer in layers]
    fig = _figure(
        5.0,
        0.66 + top + row * len(layers),
        left=_label_inches(labels, FONT - 1),
        bottom=0.42,
        top=top,
        right=right,
    )
    ax = fig.subplots()
    _style(ax)
    return fig, ax, list(range(len(layers)))


def _fraction_axes(ax: Any, layers: Sequence[Mapping[str, Any]], *, xmax: float) -> None:
    """Fractions 0-100% across, the layers' names down, the first layer on top."""
    ax.set_xlim(0, xmax)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.set_yticks(list(range(len(layers))), [_label(layer.get("name")) for layer in layers])
    ax.set_ylim(len(layers) - 0.5, -0.6)


def plot_dead_neurons(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Dead fraction per layer as horizontal bars, with the warn and fail thresholds."""
    layers = _records(evidence.get("layers"))[:_MAX_BARS]
    if not layers:
        return []
    warn, fail = _number(evidence.get("warn")), _number(evidence.get("fail"))
    fig, ax, ys = _layer_rows(layers, row=0.24, top=0.24)
    fractions = [_number(layer.get("dead_fraction")) for layer in layers]
    fractions = [None if v is None else min(max(v, 0.0), 1.0) for v in fractions]
    colors = []
    for value in fractions:
        status = "pass"
        if value is None:
            status = "skip"
        elif fail is not None and value >= fail:
            status = "fail"
        elif warn is not None and value >= warn:
            status = "warn"
        colors.append(COLORS[status])
    ax.barh(ys, [v or 0.0 for v in fractions], height=0.62, color=colors)
    for y, value, layer in zip(ys, fractions, layers):
        dead, units = _number(layer.get("dead")), _number(layer.get("units"))
        text = "n/a" if value is None else f"{value:.0%}"
        if dead is not None and units is not None:
            text += f" ({int(dead)}/{int(units)})"
        ax.text(value or 0.0, y, f" {text}", va="center", fontsize=FONT - 2, color=INK)
    for value, status in ((warn, "warn"), (fail, "fail")):
        if value is not None and 0 <= value <= 1:
            ax.axvline(value, color=COLORS[status], ls="--", lw=1)
            ax.text(
                value,
                1.0,
                f"{status} {value:.0%}",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=FONT - 2,
                color=COLORS[status],
            )
    _fraction_axes(ax, layers, xmax=1.12)
    ax.set_xlabel("fraction of units that never fire", fontsize=FONT - 1)
    return [("fraction of dead units per layer", fig)]


def plot_batchnorm(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Per batch-statistics layer, how much one forward changed its running statistics in
    train mode (must be above 0) and in eval mode (must be 0), as paired bars."""
    layers = _records(evidence.get("layers"))[:_MAX_BARS]
    if not layers:
        return []
    fig, ax, _ = _layer_rows(layers, row=0.3, top=0.3, right=0.45)
    trains = [_number(layer.get("train_change")) for layer in layers]
    evals = [_number(layer.get("eval_change")) for layer in layers]
    top = max(_finite([v for v in (*trains, *evals) if v is not None]), default=0.0) or 1.0
    height = 0.38
    for y, (train, held, layer) in enumerate(zip(trains, evals, layers)):
        if layer.get("tracks") is False:
            ax.text(0, y, " no running statistics", va="center", fontsize=FONT - 2, color=MUTED)
            continue
        ax.barh(y - height / 2, train or 0.0, height=height, color=ACCENT)
        ax.barh(y + height / 2, held or 0.0, height=height, color=COLORS["fail"])
        for offset, value, flagged, word in (
            (-height / 2, train, train == 0, "never moved"),
            (height / 2, held, bool(held), "moved"),
        ):
            text = f" {_short(value)}" + (f" ({word})" if flagged else "")
            ax.text(
                value or 0.0,
                y + offset,
                text,
                va="center",
                fontsize=FONT - 3,
                color=COLORS["fail"] if flagged else INK,
            )
    ax.set_xlim(0, top * 1.25)
    ax.set_yticks(range(len(layers)), [_label(layer.get("name")) for layer in layers])
    ax.set_ylim(len(layers) - 0.5, -0.7)
    ax.set_xlabel("relative change of the running statistics after one forward", fontsize=FONT - 1)
    ax.text(
        0.0,
        1.0,
        "train mode (above 0)",
        transform=ax.transAxes,
        ha="left",
        va="bottom",
        fontsize=FONT - 2,
        color=ACCENT,
    )
    ax.text(
        1.0,
        1.0,
        "eval mode (0)",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=FONT - 2,
        color=COLORS["fail"],
    )
    return [("running-statistics change per layer in train and eval mode", fig)]


def plot_param_updates(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Update/weight ratio per tensor (log scale, the model's order) with the band shaded,
    the notes' 1e-3 and the median; tensors with a finding are marked on the bottom edge,
    tensors that start at zero (no ratio) in grey on the top edge."""
    records = sorted(
        _records(evidence.get("tensors")), key=lambda r: _number(r.get("order")) or 0.0
    )
    if not records:
        return []
    band = _pair(evidence.get("band"))
    median = _number(evidence.get("median"))
    reference = _number(evidence.get("reference"))
    xs = list(range(len(records)))
    ratios = [_number(r.get("ratio")) for r in records]
    positive = [v for v in ratios if v is not None and v > 0]
    values = positive + [v for v in (*(band or ()), median, reference) if v and v > 0]
    low = min(values) / 3 if values else 1e-6
    high = max(values) * 3 if values else 1.0
    fig = _figure(6.8, 2.6, left=0.7, bottom=0.45, top=0.28, right=0.2)
    ax = fig.subplots()
    _style(ax)
    _log_scale(ax.yaxis)
    ax.set_ylim(low, high)
    if band is not None and band[0] > 0:
        ax.axhspan(band[0], band[1], color=TINT["pass"], zorder=0)
    if reference is not None and reference > 0:
        ax.axhline(reference, color=MUTED, ls=":", lw=1)
        ax.text(0, reference, " notes ~1e-3", va="bottom", fontsize=FONT - 2, color=MUTED)
    if median is not None and median > 0:
        ax.axhline(median, color=ACCENT, ls="--", lw=1)
        ax.text(
            len(records) - 1,
            median,
            f"median {_short(median)} ",
            ha="right",
            va="bottom",
            fontsize=FONT - 2,
            color=ACCENT,
        )
    good = [(x, v) for x, v in zip(xs, ratios) if v is not None and v > 0]
    colors = [
        COLORS["pass"] if band is None or band[0] <= v <= band[1] else COLORS["warn"]
        for _, v in good
    ]
    if good:
        ax.scatter([x for x, _ in good], [v for _, v in good], s=9, c=colors, zorder=3)
    flagged = [x for x, r in zip(xs, records) if r.get("cause")]
    if flagged:
        ax.scatter(
            flagged,
            [low * 1.15] * len(flagged),
            marker="v",
            s=22,
            c=COLORS["fail"],
            zorder=4,
            clip_on=False,
            label="finding",
        )
    zero = [x for x, v, r in zip(xs, ratios, records) if v is None and not r.get("cause")]
    if zero:
        ax.scatter(
            zero,
            [high / 1.15] * len(zero),
            marker="o",
            s=9,
            c=COLORS["skip"],
            zorder=3,
            clip_on=False,
            label="starts at 0",
        )
    if flagged or zero:
        ax.legend(
            fontsize=FONT - 2, loc="upper left", bbox_to_anchor=(0, 1.16), ncol=2, frameon=False
        )
    ax.set_xlim(-1, len(records))
    ax.set_xlabel("tensor (the model's order)", fontsize=FONT - 1)
    ax.set_ylabel("||update|| / ||w||", fontsize=FONT - 1)
    return [("update/weight ratio per tensor", fig)]


def plot_input_stats(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Per-channel (or per-feature) mean and std as bars, with the 0 and 1 references and
    the band the mean may stay in; the label counts beside them when there are labels."""
    channels = _records(evidence.get("channels"))[:_MAX_BARS]
    counts = _series(evidence.get("label_counts"))[:_MAX_BARS]
    if not channels and not counts:
        return []
    panels = int(bool(channels)) * 2 + int(bool(counts))
    fig = _figure(2.4 * panels + 0.6, 2.3, left=0.5, bottom=0.5, top=0.28, wspace=0.45)
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    unit = _label(evidence.get("unit") or "channel", 12)
    if channels:
        xs = list(range(len(channels)))
        means = [_number(c.get("mean")) for c in channels]
        stds = [_number(c.get("std")) for c in channels]
        center = _number(evidence.get("center_warn"))
        for ax, values, reference, title in (
            (axes[0], means, 0.0, "mean"),
            (axes[1], stds, 1.0, "std"),
        ):
            _style(ax)
            ax.bar(xs, [v or 0.0 for v in values], color=ACCENT, width=0.7)
            ax.axhline(reference, color=COLORS["pass"], ls="--", lw=1)
            ax.set_title(f"{title} per {unit} (target {reference:g})", fontsize=FONT, color=INK)
            ax.set_xlabel(unit, fontsize=FONT - 1)
            ax.set_xticks(xs if len(xs) <= 12 else xs[:: math.ceil(len(xs) / 12)])
        if center is not None:  # |mean| within center_warn std passes (before noise)
            band = [center * (s or 0.0) for s in stds]
            axes[0].plot(xs, band, color=COLORS["warn"], ls=":", lw=1, marker="_")
            axes[0].plot(xs, [-b for b in band], color=COLORS["warn"], ls=":", lw=1, marker="_")
        for key, status in (("std_low", "warn"), ("std_high", "warn")):
            value = _number(evidence.get(key))
            finite = _finite(v for v in (s for s in stds if s is not None))
            if value is not None and finite and value <= 3 * max(finite):
                axes[1].axhline(value, color=COLORS[status], ls=":", lw=1)
    if counts:
        ax = axes[-1]
        _style(ax)
        ax.bar(range(len(counts)), [0.0 if math.isnan(c) else c for c in counts], color=MUTED)
        total = sum(c for c in counts if not math.isnan(c))
        if total:
            ax.axhline(total / len(counts), color=COLORS["pass"], ls="--", lw=1)
        ax.set_title("label counts (line: uniform)", fontsize=FONT, color=INK)
        ticks = list(range(len(counts)))
        ax.set_xticks(ticks if len(ticks) <= 12 else ticks[:: math.ceil(len(ticks) / 12)])
        ax.set_xlabel("class", fontsize=FONT - 1)
    return [(f"input mean and std per {unit}, and label counts", fig)]


def plot_init_scale(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Weight std per layer in depth order against its He/Xavier target (log y), with the
    warn band; layers not judged (normalized, output) drawn hollow."""
    layers = _ordered_layers(evidence)[:_MAX_BARS]
    if not layers:
        return []
    fig = _figure(max(3.6, 0.9 + 0.28 * len(layers)), 2.6, left=0.6, bottom=0.75, top=0.28)
    ax = fig.subplots()
    _style(ax)
    warn = _number(evidence.get("warn"))
    xs = list(range(len(layers)))
    stds = [_number(layer.get("std")) for layer in layers]
    targets = [_number(layer.get("target")) for layer in layers]
    positive = [v if v is not None and v > 0 else math.nan for v in stds]
    goal = [v if v is not None and v > 0 else math.nan for v in targets]
    if warn is not None and warn > 1:
        ax.fill_between(
            xs,
            [g / warn for g in goal],
            [g * warn for g in goal],
            color=TINT["pass"],
            step="mid",
            lw=0,
        )
    ax.step(xs, goal, where="mid", color=COLORS["pass"], ls="--", lw=1, label="He/Xavier target")
    for x, value, layer in zip(xs, positive, layers):
        status = str(layer.get("status"))
        color = COLORS.get(status, MUTED)
        judged = bool(layer.get("judged"))
        ax.plot([x], [value], marker="o", ms=5, color=color, mfc=color if judged else "white")
    finite = _finite(positive + goal)
    if finite:
        _log_scale(ax.yaxis)
        ax.set_ylim(min(finite) / 3, max(finite) * 3)
    labels = [_label(layer.get("name"), 16) for layer in layers]
    ax.set_xticks(xs, labels, rotation=60, ha="right", fontsize=FONT - 2)
    ax.set_ylabel("weight std", fontsize=FONT - 1)
    ax.set_title("weight std per layer (hollow: not judged)", fontsize=FONT, color=INK)
    ax.legend(fontsize=FONT - 2, frameon=False, loc="best")
    return [("weight std per layer against the He/Xavier target", fig)]


def plot_learning_rate(evidence: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    """Loss after the short run against the learning rate (log x, as LR finders draw it):
    the configured rate marked, the range that works shaded, the start and divergence
    lines; and, when captured, dead ReLU units per layer before and after the run."""
    lrs = _series(evidence.get("lrs"))
    final = _series(evidence.get("final"))
    start = _series(evidence.get("start"))
    points = [(x, v) for x, v in zip(lrs, final) if math.isfinite(x) and x > 0]
    if not points:
        return []
    plots: list[tuple[str, Figure]] = []
    fig = _figure(4.6, 2.5, left=0.62, bottom=0.45, top=0.2)
    ax = fig.subplots()
    _style(ax)
    _log_scale(ax.xaxis)
    finite = [(x, v) for x, v in points if math.isfinite(v)]
    base = _finite(start)
    reference = base[0] if base else None
    factor = _number(evidence.get("diverge_factor"))
    values = [v for _, v in finite] + ([reference] if reference is not None else [])
    if values and min(values) > 0 and max(values) / min(values) > 20:
        _log_scale(ax.yaxis)
    works = _pair(evidence.get("works"))
    if works is not None:
        low, high = works
        ax.axvspan(low / 1.5, high * 1.5, color=TINT["pass"], lw=0, label="works")
    if finite:
        xs, ys = zip(*finite)
        ax.plot(xs, ys, marker="o", ms=4, color=ACCENT, lw=1.4, label="loss after the run")
    top = max(values) if values else 1.0
    broken = [x for x, v in points if not math.isfinite(v)]
    if broken:
        ax.plot(broken, [top] * len(broken), "x", color=COLORS["fail"], ms=6, label="NaN/Inf")
    if reference is not None:
        ax.axhline(reference, color=MUTED, ls=":", lw=1, label=f"start {_fmt(reference)}")
        if factor is not None and reference > 0 and factor * reference <= 1.5 * top:
            ax.axhline(factor * reference, color=COLORS["fail"], ls="--", lw=1)
    configured = _number(evidence.get("configured"))
    if configured is not None and configured > 0:
        ax.axvline(configured, color=INK, lw=1, ls="--")
        ax.text(
            configured,
            1.0,
            f"configured {_short(configured)}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=FONT - 2,
            color=INK,
        )
    ax.set_xlabel("learning rate", fontsize=FONT)
    ax.set_ylabel("loss after the run", fontsize=FONT)
    ax.legend(fontsize=FONT - 2, frameon=False)
    plots.append(("loss after a short run against the learning rate", fig))

    layers = _records(evidence.get("layers"))[:_MAX_BARS]
    if layers:
        fig, ax, rows = _layer_rows(layers, row=0.3, top=0.3)
        before = [_number(x.get("dead_before_fraction")) or 0.0 for x in layers]
        after = [_number(x.get("dead_after_fraction")) or 0.0 for x in layers]
        ax.barh([y - 0.18 for y in rows], before, height=0.34, color=COLORS["skip"], label="before")
        ax.barh([y + 0.18 for y in rows], after, height=0.34, color=COLORS["fail"], label="after")
        for y, layer, value in zip(rows, layers, after):
            died = _number(layer.get("died"))
            if died:
                ax.text(value, y + 0.18, f" {int(died)} died", va="center", fontsize=FONT - 2)
        _fraction_axes(ax, layers, xmax=1.15)
        ax.set_xlabel("fraction of units that never fire", fontsize=FONT - 1)
        ax.legend(fontsize=FONT - 2, frameon=False, loc="lower right")
        plots.append(("dead ReLU units per layer before and after the run", fig))
    return plots


def _plotters() -> dict[str, Plotter]:
    from nndiag.checks import BUILTIN

    return {spec.id: plotter for spec in BUILTIN if (plotter := spec.plotter()) is not None}


PLOTTERS: dict[str, Plotter] = _plotters()
"""Check id -> plotter; a check without an entry gets its metrics table only."""
