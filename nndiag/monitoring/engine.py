"""The monitor: the door of a plain training loop onto the rules.

``mon.step(loss)`` after each optimizer step records the loss (and, every ``every`` steps,
the sampled statistics a probe measured during that step), runs the rules and keeps the
first step each one fired. A fatal rule (a non-finite loss, a loss spike) warns, raises or
asks the loop to stop, as ``on_fatal`` says.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Literal

from nndiag.errors import InvalidSetting, InvalidSubject, TrainingUnhealthy, describe
from nndiag.monitoring.rules import Rule
from nndiag.monitoring.settings import MonitorSettings
from nndiag.monitoring.watch import Watch
from nndiag.results import Report, environment

__all__ = ["Monitor", "TrainingWarning"]

OnFatal = Literal["warn", "raise", "stop"]
_ON_FATAL = ("warn", "raise", "stop")


class TrainingWarning(UserWarning):
    """A fatal rule fired under ``on_fatal="warn"``."""


class Monitor:
    """Watch a training run: use as a context manager around the loop, and call
    ``mon.step(loss)`` after each ``optimizer.step()`` (``mon.validate(metric)`` after a
    validation, when there is one).

    Args:
        model: The torch ``nn.Module`` being trained.
        optimizer: Its optimizer: the gradients its ``step()`` used are read in a hook,
            and its learning rate is named in hints. Without one, the gradients are read at
            ``mon.step``. Updates are measured between ``mon.step`` calls either way.
        name: The subject name in the report.
        every: Sample statistics (activations, gradients, updates) on every ``every``-th
            step; the loss is read on every step.
        on_fatal: When a fatal rule fires (a non-finite loss or gradient, a loss spike):
            ``"warn"`` (a :class:`TrainingWarning`), ``"raise"``
            (:class:`nndiag.errors.TrainingUnhealthy`, the report attached), or
            ``"stop"`` (``mon.should_stop`` becomes True; the loop reads it). Every mode
            sets ``mon.should_stop``.
        settings: The rules' thresholds (:class:`MonitorSettings`).

    Raises:
        InvalidSubject: ``model`` is not a torch module, or ``optimizer`` not an optimizer.
        InvalidSetting: ``every`` or ``on_fatal`` is unusable.

    Attributes:
        should_stop: A fatal rule has fired (read it in the loop under ``on_fatal="stop"``).
        history: Everything measured so far.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any = None,
        *,
        name: str = "model",
        every: int = 50,
        on_fatal: OnFatal = "warn",
        settings: MonitorSettings | None = None,
    ) -> None:
        self.check_arguments(every, on_fatal)
        self.name, self.every, self.on_fatal = name, every, on_fatal
        self.watch = Watch(settings, hint_validation=" (call mon.validate(metric))")
        self.settings = self.watch.settings
        self.probe = _probe(model, optimizer)
        self.history = self.watch.history
        self.should_stop = False
        # The rate the coming step uses, read before a scheduler moves it.
        self._lr = self.probe.lr()
        self._armed = self._closed = False
        self._arm(0)  # step 0 is sampled, with or without ``with``

    @staticmethod
    def check_arguments(every: Any, on_fatal: Any) -> None:
        """Raise :class:`InvalidSetting` for an unusable ``every`` or ``on_fatal``."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidSetting("every", f"expects a whole number >= 1, got {describe(every)}")
        if on_fatal not in _ON_FATAL:
            raise InvalidSetting("on_fatal", f"expects one of {_ON_FATAL}, got {on_fatal!r}")

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook; later steps record the loss only."""
        self.probe.close()
        self._armed = False
        self._closed = True

    def step(self, loss: Any) -> None:
        """Record the training step that just ended (call it after ``optimizer.step()``).

        Raises:
            TrainingUnhealthy: a fatal rule fired under ``on_fatal="raise"``.
        """
        h = self.history
        h.losses.append(_as_float(loss, "loss"))
        h.lrs.append(self._lr)
        self._lr = self.probe.lr()
        if self._armed:
            h.samples.append(self.probe.collect(h.step))
            self._armed = False
        self._judge(("loss", "sample"))
        self._arm(h.step + 1)

    def validate(self, value: Any, *, higher_is_better: bool = False) -> None:
        """Record a validation metric measured now (a loss by default; an accuracy with
        ``higher_is_better=True``). One metric per monitor.

        Raises:
            InvalidSetting: before the first step, or ``higher_is_better`` changed.
        """
        h = self.history
        if h.step < 0:
            raise InvalidSetting("validate", "called before the first step", "call step first")
        if h.validations and h.higher_is_better != higher_is_better:
            raise InvalidSetting(
                "higher_is_better",
                f"is {higher_is_better} where earlier validations gave {h.higher_is_better}",
                "validate one metric per monitor (the validation loss, or an accuracy)",
            )
        h.higher_is_better = higher_is_better
        h.validations.append((h.step, _as_float(value, "value")))
        self._judge(("validation",))

    @property
    def report(self) -> Report:
        """One result per rule: ``fail``/``warn`` with the first step it fired, ``pass``
        when it watched and never fired, ``skip`` when it had nothing to read."""
        meta = environment()
        meta["monitor"] = {"steps": self.history.step + 1, "every": self.every}
        return Report(self.watch.results(self.name, self.every), meta)

    # ------------------------------------------------------------------ internals

    def _arm(self, step: int) -> None:
        if step % self.every == 0 and not self._closed:
            self.probe.arm()
            self._armed = True

    def _judge(self, reads: tuple[str, ...]) -> None:
        for rule in self.watch.judge(reads):
            self._fatal(rule)

    def _fatal(self, rule: Rule) -> None:
        self.should_stop = True
        result = self.watch.result(rule, self.name, self.every)
        if self.on_fatal == "raise":
            self.close()
            raise TrainingUnhealthy(result, self.report)
        if self.on_fatal == "warn":  # stacklevel: the user's mon.step call
            warnings.warn(result.summary(), TrainingWarning, stacklevel=4)


def _as_float(value: Any, argument: str) -> float:
    try:
        detached = value.detach() if hasattr(value, "detach") else value
        return float(detached)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidSubject(
            argument,
            f"expects a scalar (a 0-d tensor or a number), got {describe(value)}",
            "pass the batch's mean loss, e.g. loss or loss.item()",
        ) from None


def _probe(model: Any, optimizer: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(model, torch.nn.Module):
        raise InvalidSubject(
            "model",
            f"the monitor watches torch.nn.Module models, got {describe(model)}",
            "pass the nn.Module being trained",
        )
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer) and "_optimizer_step_pre_hooks" not in vars(
        optimizer
    ):
        optimizer = inner  # a wrapper that steps the optimizer it holds (accelerate's)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise InvalidSubject(
            "optimizer",
            f"expects a torch.optim.Optimizer, got {describe(optimizer)}",
            "pass the optimizer whose step() the loop calls, or None",
        )
    from nndiag.monitoring.torch_probe import TorchProbe

    return TorchProbe(model, optimizer)
