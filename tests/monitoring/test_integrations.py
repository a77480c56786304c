"""The monitor's doors onto real trainers: a PyTorch Lightning ``Trainer.fit`` and a Hugging
Face ``Trainer.train``, healthy (silent, nothing of the model's left behind) and broken (the
rule fires and the trainer stops early)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nndiag.compat import torchvision_on_cpu  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built from a config
torchvision_on_cpu()  # before Lightning and transformers import torchvision

import lightning.pytorch as pl  # noqa: E402
import transformers  # noqa: E402

from nndiag.integrations.lightning import NndiagMonitor  # noqa: E402
from nndiag.integrations.transformers import NndiagCallback  # noqa: E402


class _Classifier(pl.LightningModule):
    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
        self.nan_at = nan_at

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.nan_at is not None and self.global_step >= self.nan_at:
            loss = loss * float("nan")  # a planted fault: the loss turns NaN
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _loaders(seed: int) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4096, 20, generator=g)
    y = (x @ torch.randn(20, 5, generator=g)).argmax(1)
    data = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(data(x[:3584], y[:3584]), batch_size=32, shuffle=True)
    return train, torch.utils.data.DataLoader(data(x[3584:], y[3584:]), batch_size=512)


def _fit(module: _Classifier, callback: NndiagMonitor, seed: int) -> pl.Trainer:
    pl.seed_everything(seed, verbose=False)
    trainer = pl.Trainer(
        max_steps=100,
        val_check_interval=20,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(module, *_loaders(seed))
    return trainer


@pytest.mark.parametrize("seed", range(3))
def test_lightning_healthy_fit_is_silent_and_leaves_nothing(seed: int) -> None:
    module, callback = _Classifier(), NndiagMonitor(every=10)
    trainer = _fit(module, callback, seed)
    report = callback.report
    assert trainer.global_step == 100 and report.subjects == ["_Classifier"]
    assert [r.summary() for r in report.results if r.status not in ("pass", "skip")] == []
    assert report["generalization_gap"].status == "pass"  # validations were read
    assert len(callback.monitor.history.validations) == 5  # type: ignore[union-attr]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_lightning_stops_on_a_nan_loss() -> None:
    module, callback = _Classifier(nan_at=30), NndiagMonitor(every=10)
    trainer = _fit(module, callback, 0)
    result = callback.report["nonfinite"]
    assert result.status == "fail" and result.metrics["step"] == 30
    assert trainer.should_stop and trainer.global_step < 40


def _gpt2(lr: float, tmp_path: Path, seed: int) -> tuple[transformers.Trainer, NndiagCallback]:
    transformers.set_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(seed)
    rows = [
        {"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (512, 16), generator=g)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=60,
        per_device_train_batch_size=8,
        learning_rate=lr,
        eval_strategy="steps",
        eval_steps=20,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
    )
    callback = NndiagCallback(every=10)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=rows[:448],
        eval_dataset=rows[448:],
        callbacks=[callback],
    )
    return trainer, callback


def test_transformers_healthy_train_is_silent_and_leaves_nothing(tmp_path: Path) -> None:
    trainer, callback = _gpt2(1e-3, tmp_path, 0)
    trainer.train()
    report = callback.report
    assert trainer.state.global_step == 60 and callback.missing == 0
    assert [r.summary() for r in report.results if r.status not in ("pass", "skip")] == []
    assert len(callback.monitor.history.losses) == 60  # type: ignore[union-attr]
    assert len(callback.monitor.history.validations) == 3  # type: ignore[union-attr]
    model = trainer.model
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_transformers_stops_a_diverging_run(tmp_path: Path) -> None:
    trainer, callback = _gpt2(50.0, tmp_path, 0)  # a learning rate 50,000x too high
    trainer.train()
    fired = {r.check: r.metrics["step"] for r in callback.report.results if r.status == "fail"}
    assert fired.keys() & {"nonfinite", "loss_spike"}, callback.report.results
    assert trainer.state.global_step < 60
