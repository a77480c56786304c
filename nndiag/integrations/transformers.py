"""``NndiagCallback``: :func:`nndiag.monitor` as a Hugging Face ``TrainerCallback``.

::

    trainer = Trainer(model, args, train_dataset=..., callbacks=[NndiagCallback(every=50)])
    trainer.train()
    callback.report  # one result per rule

Each optimizer step is a step. Its loss is the mean of the ``loss`` the model returned on
that step's training forwards (a Hugging Face model given ``labels`` returns one), read by a
forward hook; each evaluation's ``eval_loss`` (``validation_metric``) is a validation. A
fatal rule ends training through ``control.should_training_stop`` under
``on_fatal="stop"`` (the default).
"""

from __future__ import annotations

from typing import Any

from nndiag.compat import torchvision_on_cpu

torchvision_on_cpu()  # transformers imports torchvision where it is installed
from transformers import TrainerCallback  # noqa: E402

from nndiag.errors import TrainingUnhealthy  # noqa: E402
from nndiag.monitoring import Monitor, MonitorSettings  # noqa: E402
from nndiag.monitoring.engine import OnFatal  # noqa: E402
from nndiag.results import Report  # noqa: E402

__all__ = ["NndiagCallback"]


class NndiagCallback(TrainerCallback):
    """Watch a ``Trainer.train`` run with nndiag's training rules (see docs/monitor.md).

    Args:
        every: Sample activations, gradients and updates every ``every`` optimizer steps.
        on_fatal: ``"stop"`` (``control.should_training_stop``), ``"raise"`` or ``"warn"``.
        validation_metric: The evaluation metric read after each evaluation.
        higher_is_better: Whether a larger ``validation_metric`` is better.
        name: The subject name in the report (default: the model's class name).
        settings: The rules' thresholds.
    """

    def __init__(
        self,
        every: int = 50,
        on_fatal: OnFatal = "stop",
        validation_metric: str = "eval_loss",
        higher_is_better: bool = False,
        name: str | None = None,
        settings: MonitorSettings | None = None,
    ) -> None:
        Monitor.check_arguments(every, on_fatal)
        self.every, self.on_fatal, self.settings = every, on_fatal, settings
        self.validation_metric, self.higher_is_better = validation_metric, higher_is_better
        self.name = name
        self.monitor: Monitor | None = None
        self.losses: list[float] = []
        self.missing = 0  # optimizer steps whose forwards returned no loss
        self._hook: Any = None

    @property
    def report(self) -> Report:
        """The rules' results (empty before training starts)."""
        return self.monitor.report if self.monitor is not None else Report([])

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer = kwargs["model"], kwargs.get("optimizer")
        self.monitor = Monitor(
            model,
            optimizer,
            name=self.name or type(model).__name__,
            every=self.every,
            on_fatal=self.on_fatal,
            settings=self.settings,
        ).__enter__()
        self._hook = model.register_forward_hook(self._read_loss)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.monitor is None:
            return control
        if not self.losses:
            self.missing += 1
            return control
        loss, self.losses = sum(self.losses) / len(self.losses), []
        try:
            self.monitor.step(loss)
        except TrainingUnhealthy:  # the Trainer calls no callback on the way out
            self.on_train_end(args, state, control)
            raise
        if self.on_fatal == "stop" and self.monitor.should_stop:
            control.should_training_stop = True
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        value = (kwargs.get("metrics") or {}).get(self.validation_metric)
        if self.monitor is not None and value is not None and self.monitor.history.step >= 0:
            self.monitor.validate(value, higher_is_better=self.higher_is_better)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close()

    def _read_loss(self, module: Any, args: Any, output: Any) -> None:
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if loss is not None and getattr(loss, "ndim", 1) == 0:
            self.losses.append(float(loss.detach()))
