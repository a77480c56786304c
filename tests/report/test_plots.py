from __future__ import annotations

import base64
import io

import pytest
import report_synthetic as synthetic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nndiag.report import plots
from nndiag.results import CheckResult

numbers = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.text(max_size=5),
)
values = st.recursive(
    numbers,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "depth",
                    "mean",
                    "std",
                    "hist_counts",
                    "hist_edges",
                    "rel_error",
                    "status",
                    "dead_fraction",
                    "units",
                    "dead",
                    "kind",
                    "saturated",
                    "dead_before_fraction",
                    "dead_after_fraction",
                    "died",
                ]
            ),
            inner,
            max_size=6,
        ),
    ),
    max_leaves=12,
)
EVIDENCE_KEYS = [
    "measured",
    "expected",
    "band",
    "warn_band",
    "fail_band",
    "strengths",
    "losses",
    "loss",
    "accuracy",
    "target_loss",
    "tensors",
    "warn",
    "fail",
    "bands",
    "coordinates",
    "layers",
    "channels",
    "label_counts",
    "unit",
    "center_warn",
    "std_low",
    "std_high",
    "symmetric",
    "lrs",
    "final",
    "start",
    "configured",
    "works",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    check=st.sampled_from(sorted(plots.PLOTTERS)),
    evidence=st.dictionaries(st.sampled_from(EVIDENCE_KEYS), values, min_size=1),
)
def test_plots_for_never_raises(check: str, evidence: dict) -> None:
    drawn = plots.plots_for(CheckResult(check, "warn", "m", evidence=evidence))
    for plot in drawn:
        assert (plot.uri is None) != (plot.note is None)
        assert plot.uri is None or plot.uri.startswith("data:image/png;base64,")
        assert plot.note is None or plot.note.startswith("plot unavailable (")


def test_figure_to_data_uri_is_a_small_png() -> None:
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(2, 1), dpi=plots.DPI)
    fig.subplots().plot([0, 1], [1, 0])
    uri = plots.figure_to_data_uri(fig)
    data = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (2 * plots.DPI, plots.DPI)
    assert b"matplotlib" not in data  # no version chunk: bytes depend on the plot only


@pytest.mark.parametrize("name", ["a$b", "$x$", "$\\frac{", "{}%_^\\"])
def test_user_labels_are_not_read_as_math(name: str) -> None:
    result = synthetic.result("net", "dead_neurons", "warn", names=[name, name])
    (plot,) = plots.plots_for(result)
    assert plot.note is None and plot.uri


def test_wide_histogram_row_gets_its_own_row() -> None:
    drawn = plots.plots_for(synthetic.result("net", "activation_stats", "pass"))
    assert [p.wide for p in drawn] == [True, False]


def test_many_tensors_are_capped() -> None:
    tensors = [{"name": f"w{i}", "rel_error": 1e-9, "status": "pass"} for i in range(100)]
    (plot,) = plots.plots_for(
        CheckResult("gradient_check", "pass", "m", evidence={"tensors": tensors})
    )
    assert "first 40 of 100 tensors" in plot.alt


def test_measured_far_outside_the_bands_is_pinned_to_the_edge() -> None:
    evidence = synthetic.initial_loss("fail", synthetic.random.Random(0))["evidence"]
    evidence["measured"] = 1e9
    (plot,) = plots.plots_for(CheckResult("initial_loss", "fail", "m", evidence=evidence))
    assert plot.uri and plot.note is None


def test_tick_labels_are_plain_text() -> None:
    assert [plots._tick_label(v) for v in (1e-7, 0.01, 1.0, 1e3, 0, 2.5e-7)] == [
        "1e-7",
        "0.01",
        "1",
        "1e3",
        "0",
        "2.5e-7",
    ]


def _texts(figure: object) -> list[str]:
    axes = figure.axes[0]  # type: ignore[attr-defined]
    ticks = [label.get_text() for label in axes.get_yticklabels()]
    return ticks + [text.get_text().strip() for text in axes.texts]


def test_gradient_plot_of_a_screened_pass_shows_the_screens_not_missing_tensors() -> None:
    tensors = [{"name": f"t{i}", "shape": [3], "status": "pass", "no_grad": False} for i in "ab"]
    evidence = {
        "tensors": tensors,
        "screens": [{"errors": [[1e-5, 3e-9], [1e-6, 2e-8]]}, {"errors": [[1e-5, 5e-7]]}],
        "warn": 1e-6,
        "fail": 1e-4,
    }
    ((alt, figure),) = plots.plot_gradient_check(evidence)
    texts = _texts(figure)
    assert "direction 1, all 2 tensors" in texts and "direction 2, all 2 tensors" in texts
    assert "3.00e-9" in texts and "5.00e-7" in texts and "missing" not in texts
    assert "whole-model screen" in alt


def test_gradient_plot_marks_tensors_a_passing_group_cleared() -> None:
    evidence = {
        "tensors": [
            {"name": "a", "status": "pass", "no_grad": False, "judged_error": 0.0},
            {"name": "b", "status": "fail", "no_grad": False, "rel_error": 0.01},
            {"name": "c", "status": "warn", "no_grad": True, "judged_error": 0.0},
        ],
        "warn": 1e-6,
        "fail": 1e-4,
    }
    ((_, figure),) = plots.plot_gradient_check(evidence)
    texts = _texts(figure)
    assert "cleared with its group" in texts  # a
    assert "missing" in texts  # c: no gradient at all
    assert texts.count("cleared with its group") == 1


@pytest.mark.parametrize("worst", [1e-9, 1e-5, 3e-3, 0.5, 40.0, 1234.5, 6.5e8])
def test_gradient_plot_labels_stay_inside_the_axes(worst: float) -> None:
    evidence = {
        "tensors": [
            {"name": "layer4.1.conv2.weight", "rel_error": worst, "status": "fail"},
            {"name": "fc.bias", "rel_error": 1e-9, "status": "pass"},
        ],
        "warn": 1e-4,
        "fail": 1e-2,
    }
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    (_, fig), *_ = plots.plot_gradient_check(evidence)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    frame = ax.get_window_extent(renderer)
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, (worst, text.get_text())
