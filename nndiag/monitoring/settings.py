"""The monitor's thresholds: one frozen dataclass, each field citing where its default
comes from. Bounds live in the field metadata and are checked once, when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from nndiag.errors import InvalidSetting, InvalidSettingType, describe

__all__ = ["MonitorSettings"]

_LECTURE = "CS231n lecture 5, 'Babysitting the learning process'"
_DEEPCHECKER = "TheDeepChecker (Ben Braiek & Khomh, 2021)"


def _setting(default: Any, low: float, high: float, source: str) -> Any:
    return field(default=default, metadata={"low": low, "high": high, "source": source})


@dataclass(frozen=True)
class MonitorSettings:
    """When the monitor's rules fire. Steps count ``mon.step`` calls; a window is a run of
    consecutive steps."""

    spike_factor: float = _setting(
        3.0,
        1.5,
        1e6,
        f"{_LECTURE}: a loss above 3x its start means stop; Lightning's "
        "SpikeDetection: 3x its running mean",
    )
    spike_window: int = _setting(20, 2, 10_000, "Lightning's SpikeDetection (10-step mean)")
    spike_confirm: int = _setting(
        3, 1, 100, "re-measured on the next batches, so one hard batch is not a spike"
    )
    spike_floor: float = _setting(
        0.5,
        0.0,
        1.0,
        "a spike must climb back to this fraction of the starting loss: a bump from 0.05 "
        "to 0.2 late in training is noise, not an explosion",
    )
    flat_window: int = _setting(25, 2, 100_000, "steps averaged per window of the loss")
    flat_patience: int = _setting(
        4, 2, 1000, f"{_DEEPCHECKER}: the loss not falling over 5 checks in a row"
    )
    flat_min_fall: float = _setting(
        0.01, 0.0, 0.9, "a window must beat the best earlier one by this fraction"
    )
    flat_floor: float = _setting(
        0.9,
        0.0,
        1.0,
        "judged only while the loss never fell below this fraction of its start (the "
        "lecture's 'loss not going down'): a loss that learned and settled, as with noisy "
        "labels, is flat too",
    )
    ratio_high: float = _setting(
        0.1, 1e-6, 1e6, f"{_LECTURE}: update/weight ~1e-3; {_DEEPCHECKER}: log10 in [-4, -1]"
    )
    ratio_confirm: int = _setting(2, 1, 100, "consecutive samples above ratio_high")
    dead_warn: float = _setting(0.5, 0.0, 1.0, f"{_DEEPCHECKER}: over 50% of a layer's units dead")
    dead_rise: float = _setting(
        0.25, 0.0, 1.0, "dying, not born dead: the rise since the first sample"
    )
    grad_explode: float = _setting(
        100.0, 2.0, 1e12, "the gradient norm over the median of the earlier samples"
    )
    gap_rise: float = _setting(
        0.25,
        0.0,
        1e6,
        "the validation metric worse than its best by this fraction on "
        "each of gap_patience validations: the noise of a healthy SGD run stays below it",
    )
    gap_window: int = _setting(
        10,
        1,
        100_000,
        "training steps averaged as the training loss at a validation: "
        "short, so that it does not lag a fast descent",
    )
    gap_patience: int = _setting(
        3, 1, 1000, f"{_LECTURE}: a growing gap between training and validation: overfitting"
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            kind = int if spec.type in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidSettingType(
                    spec.name, f"expects a number, got {describe(value)}", "pass a number"
                )
            if kind is int and not isinstance(value, int):
                raise InvalidSettingType(
                    spec.name, f"expects a whole number, got {describe(value)}", "pass an int"
                )
            low, high = spec.metadata["low"], spec.metadata["high"]
            if not low <= value <= high:
                raise InvalidSetting(spec.name, f"{value} is outside [{low}, {high}]")

    @staticmethod
    def sources() -> dict[str, str]:
        """Each setting's source, for the docs and the report."""
        return {spec.name: spec.metadata["source"] for spec in fields(MonitorSettings)}
