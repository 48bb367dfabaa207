"""TimedCheckpoint keeps a checkpoint per interval of training wall-clock, under manual optimization too (where
Lightning's ModelCheckpoint(train_time_interval=...) saves none)."""

from __future__ import annotations

import itertools
import types
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_mf.callbacks.timed_checkpoint as timed_checkpoint
from lightning_mf.callbacks import TimedCheckpoint


class ManualModule(L.LightningModule):
    """Optimizes by hand, as every stage-3 module does (generator and fake score)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        loss = self.layer(batch[0]).square().mean()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_checkpoint_per_interval_of_training_time_under_manual_optimization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(0.0, 6.0)  # each reading of the clock: 6 s later (training start, then every step's end)
    monkeypatch.setattr(timed_checkpoint, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    trainer = L.Trainer(
        max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[TimedCheckpoint(str(tmp_path / "ckpt"), every_seconds=10.0)],
    )
    data = DataLoader(TensorDataset(torch.randn(10, 2)), batch_size=2)
    trainer.fit(ManualModule(), data)
    # steps end at 6, 12, 18, 24, 30 s: saved at 12 (12 s since the start) and 24 (12 s since the save at 12)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step=2.ckpt", "step=4.ckpt"]
    assert torch.load(tmp_path / "ckpt/step=4.ckpt", weights_only=False)["global_step"] == 4


def test_timed_checkpoint_refuses_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="every_seconds must be > 0"):
        TimedCheckpoint("ckpt", every_seconds=0)
