"""The check registry: one :class:`CheckSpec` record per check, and nothing else to edit.

A check is a pure function ``(session, config) -> CheckResult`` in its own module (no
pytest inside), asking its questions through the primitives of
:class:`nndiag.contract.Session`. Its record says everything the rest of nndiag needs: the
id, where the function lives, whether it runs by default (and why), the ``Config`` fields it
reads (its settings section), its plot and evidence tables in the report, and a one-line
doc. Every list of checks, count and help text derives from :func:`registry`.

Records name functions as ``"module:attribute"`` strings, so that listing checks (as the
pytest plugin does at start-up) imports no check and no framework. Third parties register
a record under the ``nndiag.checks`` entry-point group (see ``docs/writing-a-check.md``).
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from nndiag.errors import InvalidSetting

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from nndiag.config import Config
    from nndiag.contract import Session
    from nndiag.results import CheckResult

    CheckFunction = Callable[[Session, Config], CheckResult]
    Plotter = Callable[[Mapping[str, Any]], list[tuple[str, Figure]]]

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "CheckSpec",
    "TableSpec",
    "UnknownCheck",
    "default_checks",
    "get_check",
    "registry",
    "resolve",
]

ENTRY_POINT_GROUP = "nndiag.checks"


class UnknownCheck(InvalidSetting):
    """A check id that no record has (a ``ValueError``); the message lists the known ones."""

    def __init__(self, check: object, known: list[str]) -> None:
        close = difflib.get_close_matches(str(check), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "use one of the known ids"
        super().__init__(
            "checks", f"unknown check {check!r}; known checks: {', '.join(known)}", hint
        )
        self.check = check


@dataclass(frozen=True)
class TableSpec:
    """An evidence table in the report: records under ``evidence[key]``, one row each."""

    key: str
    title: str
    columns: tuple[tuple[str, str], ...]  # (record key, column header)
    sort_by: str | None = None  # a numeric record key the rows are ordered by


@dataclass(frozen=True)
class CheckSpec:
    """Everything nndiag knows about one check.

    Attributes:
        id: Stable id: result key, pytest item name, JSON field.
        function: ``"module:function"`` (or the function itself) taking
            ``(session, config)`` and returning a :class:`~nndiag.results.CheckResult`.
        doc: One line: what the check asks.
        default: Whether ``diagnose()`` and ``pytest --nndiag`` run it unless told otherwise.
        why: Why it is on by default or opt-in (its cost, what it needs).
        settings: The ``Config`` fields the check reads: its settings section.
        plot: ``"module:function"`` (a bare name means one in :mod:`nndiag.report.plots`)
            or a callable drawing ``evidence -> [(alt text, matplotlib Figure)]``.
        tables: Evidence tables the report shows under the check's metrics.
    """

    id: str
    function: str | Callable[..., Any]
    doc: str
    default: bool = True
    why: str = ""
    settings: tuple[str, ...] = ()
    plot: str | Callable[..., Any] | None = None
    tables: tuple[TableSpec, ...] = ()

    def load(self) -> CheckFunction:
        """The check function (imports its module on first use)."""
        return resolve(self.function)

    def plotter(self) -> Plotter | None:
        """The plot function, or None when the check draws no plot."""
        if self.plot is None:
            return None
        if isinstance(self.plot, str) and ":" not in self.plot:
            return resolve(f"nndiag.report.plots:{self.plot}")
        return resolve(self.plot)


def resolve(target: str | Callable[..., Any]) -> Any:
    """The object a ``"module:attribute"`` string names (a callable is returned as is)."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_COORDINATE_COLUMNS = (
    ("tensor", "tensor"),
    ("index", "index"),
    ("analytic", "analytic"),
    ("numeric", "numeric"),
    ("rel_error", "rel. error"),
)

BUILTIN: tuple[CheckSpec, ...] = (
    CheckSpec(
        "initial_loss",
        "nndiag.checks.initial_loss:initial_loss",
        "Is the loss at init what an uninformative model scores (ln C, or the label prior's "
        "entropy)?",
        why="one forward pass",
        settings=(
            "initial_loss_warn",
            "initial_loss_fail",
            "initial_loss_sigmas",
            "initial_loss_leak",
            "initial_loss_width_warn",
            "initial_loss_width_fail",
        ),
        plot="plot_initial_loss",
    ),
    CheckSpec(
        "regularization_loss",
        "nndiag.checks.regularization:regularization_loss",
        "Does raising the regularization strength raise the loss?",
        why="four forward passes; skips without a regularization knob",
        settings=("regularization_strengths", "regularization_min_rise"),
        plot="plot_regularization_loss",
    ),
    CheckSpec(
        "overfit_small",
        "nndiag.checks.overfit:overfit_small",
        "Can the model fit ~20 samples to ~100% accuracy and ~0 loss, regularization off?",
        why="at most overfit_steps training steps on 20 samples",
        settings=(
            "overfit_samples",
            "overfit_steps",
            "overfit_lr",
            "overfit_loss_ratio",
            "overfit_diverge_factor",
            "overfit_diverge_steps",
            "overfit_flat_ratio",
            "overfit_fitted_ratio",
            "overfit_partial_ratio",
            "dead_fail",
            "histogram_bins",
        ),
        plot="plot_overfit_small",
    ),
    CheckSpec(
        "gradient_check",
        "nndiag.checks.gradients:gradient_check",
        "Do analytic gradients match centered differences (float64), for every tensor?",
        why="one backward pass and a few float64 forward passes, whatever the number of "
        "tensors; more only to localize a failure",
        settings=(
            "gradient_steps",
            "gradient_warn",
            "gradient_fail",
            "gradient_batch",
            "gradient_zero",
            "gradient_jitter",
            "gradient_coordinates",
        ),
        plot="plot_gradient_check",
        tables=(
            TableSpec(
                "tensors",
                "tensors",
                (
                    ("name", "tensor"),
                    ("shape", "shape"),
                    ("rel_error", "rel. error"),
                    ("step", "step h"),
                    ("status", "status"),
                ),
            ),
            TableSpec("coordinates", "sampled coordinates", _COORDINATE_COLUMNS),
        ),
    ),
    CheckSpec(
        "activation_stats",
        "nndiag.checks.activations:activation_stats",
        "Does the activations' std hold up with depth, without saturating tanh/sigmoid?",
        why="one forward pass, shared with dead_neurons",
        settings=(
            "saturation_warn",
            "saturation_fail",
            "collapse_warn",
            "collapse_fail",
            "histogram_bins",
        ),
        plot="plot_activation_stats",
        tables=(
            TableSpec(
                "layers",
                "layers (depth order)",
                (
                    ("name", "layer"),
                    ("kind", "kind"),
                    ("mean", "mean"),
                    ("std", "std"),
                    ("saturated", "saturated"),
                    ("weight_layer", "weights"),
                    ("weight_std", "weight std"),
                    ("recommended_std", "recommended std"),
                ),
                sort_by="depth",
            ),
        ),
    ),
    CheckSpec(
        "dead_neurons",
        "nndiag.checks.activations:dead_neurons",
        "What fraction of each layer's ReLUs never fire over the batch?",
        why="shares activation_stats' forward pass",
        settings=("dead_warn", "dead_fail", "histogram_bins"),
        plot="plot_dead_neurons",
        tables=(
            TableSpec(
                "layers",
                "layers",
                (
                    ("name", "layer"),
                    ("units", "units"),
                    ("dead", "dead"),
                    ("dead_fraction", "dead fraction"),
                ),
            ),
        ),
    ),
    CheckSpec(
        "batch_independence",
        "nndiag.checks.batch_independence:batch_independence",
        "Does the output of sample i never depend on input j != i (eval mode)?",
        why="three backward passes on independence_rows rows; shrinking only on a failure",
        settings=(
            "independence_rows",
            "independence_tolerance",
            "independence_rtol",
            "independence_examples",
        ),
    ),
    CheckSpec(
        "causality",
        "nndiag.checks.causality:causality",
        "In an autoregressive model, does the output at position t never read an input at a "
        "later position, and does padding under an attention mask never move a real "
        "output (eval mode)?",
        why="two eval forwards of 2 x causality_positions copies of a row, one of the "
        "padded rows twice; skipped unless the task is autoregressive (next-token targets, "
        "a generating model without an encoder, or Subject(causal=True)) or an attention "
        "mask marks padding",
        settings=("causality_rows", "causality_positions", "causality_rtol"),
        tables=(
            TableSpec("pairs", "Leaking positions", (("position", "output"), ("source", "input"))),
        ),
    ),
    CheckSpec(
        "numerics",
        "nndiag.checks.numerics:numerics",
        "Do forward, loss and backward stay finite (naming the first NaN/Inf producer), and "
        "is eval mode deterministic?",
        why="a watched forward+backward in train mode, a watched forward in eval mode and "
        "two eval forwards",
        settings=("numerics_rows", "numerics_eval_rtol"),
    ),
    CheckSpec(
        "batchnorm",
        "nndiag.checks.batchnorm:batchnorm",
        "Do running statistics move in train mode and not in eval mode, is eval mode "
        "batch-independent, and do train and eval losses agree once the statistics are warm?",
        why="forward passes without gradients: 4, plus 3 per stored batch (warming and the "
        "gap), 7 for one batch; skips without batch-statistics layers",
        settings=("batchnorm_eval_rtol", "batchnorm_gap_warn"),
        plot="plot_batchnorm",
        tables=(
            TableSpec(
                "layers",
                "batch-statistics layers",
                (
                    ("name", "layer"),
                    ("momentum", "momentum"),
                    ("train_change", "change in train mode"),
                    ("eval_change", "change in eval mode"),
                ),
            ),
        ),
    ),
    CheckSpec(
        "param_updates",
        "nndiag.checks.param_updates:param_updates",
        "Do a few optimizer steps change every trainable tensor (held by the optimizer, with "
        "a gradient) and no frozen one, by an update/weight ratio near the notes' ~1e-3?",
        why="param_update_steps (3) forward+backward passes; one more only to confirm a "
        "tensor without gradient",
        settings=(
            "param_update_steps",
            "param_update_rows",
            "param_update_ratio_low",
            "param_update_ratio_high",
            "param_update_negligible",
            "overfit_lr",
        ),
        plot="plot_param_updates",
        tables=(
            TableSpec(
                "tensors",
                "tensors (findings first, then in the model's order)",
                (
                    ("name", "tensor"),
                    ("weight_norm", "||w||"),
                    ("update_norm", "||update|| per step"),
                    ("grad_norm", "||grad||"),
                    ("ratio", "update/weight"),
                    ("cause", "finding"),
                    ("note", "note"),
                ),
            ),
        ),
    ),
    CheckSpec(
        "input_stats",
        "nndiag.checks.input_stats:input_stats",
        "Are the inputs zero-centred and normalized (per channel for images), free of raw "
        "0-255 pixels and constant features, and the labels balanced?",
        why="data only: no forward pass",
        settings=(
            "input_center_warn",
            "input_center_sigmas",
            "input_std_low",
            "input_std_high",
            "input_imbalance_p",
            "input_imbalance_share",
        ),
        plot="plot_input_stats",
    ),
    CheckSpec(
        "init_scale",
        "nndiag.checks.init_scale:init_scale",
        "Is each layer's weight std near He/Xavier for the activation that follows, and are "
        "no units initialized identically?",
        why="reads the weights; shares activation_stats' forward pass",
        settings=("init_scale_warn", "init_scale_fail", "histogram_bins"),
        plot="plot_init_scale",
        tables=(
            TableSpec(
                "layers",
                "layers (depth order)",
                (
                    ("name", "weights"),
                    ("activation", "activation"),
                    ("fan_in", "fan_in"),
                    ("std", "std"),
                    ("rule", "rule"),
                    ("target", "target std"),
                    ("ratio", "std / target"),
                    ("not_judged", "not judged"),
                    ("status", "status"),
                ),
                sort_by="depth",
            ),
        ),
    ),
    CheckSpec(
        "learning_rate",
        "nndiag.checks.learning_rate:learning_rate",
        "Does the configured learning rate make the loss fall without diverging or killing "
        "ReLU units, and which range of rates works?",
        default=False,
        why="a range test: lr_steps + 1 training steps at each of 7 rates from the "
        "same weights and two activation captures (42 forward+backward passes and 2 "
        "forwards; resnet18 on 16 images: 5.1 s, 62x one forward+backward in time, Adam "
        "steps and captures included), "
        "plus lr_confirm_steps steps only to re-measure a failure",
        settings=(
            "lr_factors",
            "lr_steps",
            "lr_flat_fall",
            "lr_confirm_steps",
            "lr_died_fail",
            "lr_extra_decades",
            "overfit_samples",
            "overfit_lr",
            "overfit_diverge_factor",
            "max_samples",
            "histogram_bins",
        ),
        plot="plot_learning_rate",
        tables=(
            TableSpec(
                "layers",
                "ReLU layers before and after the run at the configured rate",
                (
                    ("name", "layer"),
                    ("units", "units"),
                    ("dead_before", "dead before"),
                    ("dead_after", "dead after"),
                    ("died", "died"),
                ),
                sort_by="depth",
            ),
        ),
    ),
    CheckSpec(
        "training",
        "nndiag.checks.training:training",
        "Do training_steps steps of real training (the subject's optimizer and batches) "
        "stay healthy under the training monitor's rules: finite, no spike, a falling "
        "loss, sane updates, no units dying, no exploding gradients?",
        default=False,
        why="training_steps forward+backward passes (200) and a capture forward every "
        "training_every steps; skips without the subject's own optimizer",
        settings=("training_steps", "training_every"),
        tables=(
            TableSpec(
                "rules",
                "The training monitor's rules over the run",
                (
                    ("rule", "rule"),
                    ("status", "status"),
                    ("step", "first step"),
                    ("message", "message"),
                ),
            ),
        ),
    ),
)


def _registered() -> list[CheckSpec]:
    from importlib.metadata import entry_points

    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:  # one broken plugin must not break every run: it is left out, with a warning
            spec = ep.load()
        except Exception as exc:
            warnings.warn(
                f"nndiag check entry point {ep.name!r} failed to load: {exc!r}", stacklevel=2
            )
            continue
        if not isinstance(spec, CheckSpec):
            warnings.warn(
                f"entry point {ep.name!r} in group {ENTRY_POINT_GROUP!r} names "
                f"{type(spec).__name__}, not an nndiag.checks.CheckSpec: left out",
                stacklevel=2,
            )
            continue
        found.append(spec)
    return found


@lru_cache(maxsize=1)
def registry() -> dict[str, CheckSpec]:
    """Every check by id: nndiag's own, then those registered under the entry-point group
    (a registered id never replaces a built-in one). Read once per process; call
    ``registry.cache_clear()`` after installing a plugin at run time."""
    records = {spec.id: spec for spec in BUILTIN}
    for spec in _registered():
        records.setdefault(spec.id, spec)
    return records


def default_checks() -> tuple[str, ...]:
    """Ids of the checks that run unless a run names its own, in registry order."""
    return tuple(spec.id for spec in registry().values() if spec.default)


def get_check(check_id: str) -> CheckSpec:
    """The record of ``check_id``.

    Raises:
        UnknownCheck: no check has that id (a ``ValueError``); the message lists the ids.
    """
    records = registry()
    spec = records.get(check_id) if isinstance(check_id, str) else None
    if spec is None:
        raise UnknownCheck(check_id, list(records))
    return spec
