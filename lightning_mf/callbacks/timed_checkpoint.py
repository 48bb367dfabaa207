"""TimedCheckpoint: a checkpoint every N seconds of training, so a run with a wall-clock budget has a learning curve.

Lightning's ``ModelCheckpoint(train_time_interval=...)`` saves nothing for a module with manual optimization (its
manual branch of ``on_train_batch_end`` only looks at ``every_n_train_steps``; lightning 2.6), and every stage-3 module
here optimizes manually (generator and fake score). Runs compared at equal wall-clock need checkpoints at equal
times, not at equal steps, so this callback keeps them by the clock.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["TimedCheckpoint"]


class TimedCheckpoint(L.Callback):
    """Save ``<dirpath>/step=<global step>.ckpt`` after the first training step that ends ``every_seconds`` or more
    after the last save (or the start of training).

    Args:
        dirpath: folder of the checkpoints (made if missing).
        every_seconds: training wall-clock between checkpoints.
    """

    def __init__(self, dirpath: str, every_seconds: float = 60.0) -> None:
        if every_seconds <= 0:
            raise ValueError(f"TimedCheckpoint: every_seconds must be > 0, got {every_seconds}")
        self.dirpath, self.every_seconds = Path(dirpath), every_seconds
        self._last = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = time.monotonic()
        # every rank must take the same decision: saving is collective under FSDP
        if not trainer.strategy.broadcast(now - self._last >= self.every_seconds):
            return
        self._last = now
        trainer.save_checkpoint(self.dirpath / f"step={trainer.global_step}.ckpt")
