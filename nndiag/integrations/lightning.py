"""``NndiagMonitor``: :func:`nndiag.monitor` as a PyTorch Lightning callback.

::

    trainer = L.Trainer(callbacks=[NndiagMonitor(every=50)])
    trainer.fit(model, train_loader, val_loader)
    callback.report  # one result per rule

Each training batch is a step (its loss is what ``training_step`` returned); each
validation run's ``validation_metric`` (``val_loss`` by default, as logged with
``self.log``) is a validation. A fatal rule stops the trainer through
``trainer.should_stop``, decided across ranks, under ``on_fatal="stop"`` (the default).
"""

from __future__ import annotations

from typing import Any

from nndiag.compat import torchvision_on_cpu

torchvision_on_cpu()  # Lightning imports torchmetrics, which imports torchvision
import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from nndiag.monitoring import Monitor, MonitorSettings  # noqa: E402
from nndiag.monitoring.engine import OnFatal  # noqa: E402
from nndiag.results import Report  # noqa: E402

__all__ = ["NndiagMonitor"]


class NndiagMonitor(Callback):
    """Watch a ``Trainer.fit`` run with nndiag's training rules (see docs/monitor.md).

    Args:
        every: Sample activations, gradients and updates every ``every`` batches.
        on_fatal: ``"stop"`` (``trainer.should_stop``), ``"raise"`` or ``"warn"``.
        validation_metric: The logged metric read after each validation run.
        higher_is_better: Whether a larger ``validation_metric`` is better (an accuracy).
        name: The subject name in the report (default: the module's class name).
        settings: The rules' thresholds.
    """

    def __init__(
        self,
        every: int = 50,
        on_fatal: OnFatal = "stop",
        validation_metric: str = "val_loss",
        higher_is_better: bool = False,
        name: str | None = None,
        settings: MonitorSettings | None = None,
    ) -> None:
        self.every, self.on_fatal, self.settings = every, on_fatal, settings
        self.validation_metric, self.higher_is_better = validation_metric, higher_is_better
        self.name = name
        self.monitor: Monitor | None = None
        Monitor.check_arguments(every, on_fatal)

    @property
    def report(self) -> Report:
        """The rules' results (empty before ``fit`` starts)."""
        return self.monitor.report if self.monitor is not None else Report([])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = trainer.optimizers
        self.monitor = Monitor(
            pl_module,
            optimizers[0] if optimizers else None,
            name=self.name or type(pl_module).__name__,
            every=self.every,
            on_fatal=self.on_fatal,
            settings=self.settings,
        ).__enter__()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.monitor is None or loss is None:
            return  # a training_step that skipped the batch
        self.monitor.step(loss)
        self._stop_if_unhealthy(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.validation_metric)
        if self.monitor is None or trainer.sanity_checking or value is None:
            return
        if self.monitor.history.step >= 0:
            self.monitor.validate(value, higher_is_better=self.higher_is_better)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def _stop_if_unhealthy(self, trainer: pl.Trainer) -> None:
        if self.on_fatal != "stop" or self.monitor is None:
            return
        # Every rank stops when one does: a rank left training alone would hang.
        if trainer.strategy.reduce_boolean_decision(self.monitor.should_stop, all=False):
            trainer.should_stop = True
