"""Lightning's ModelCheckpoint, plus the final weights in ``last.ckpt``.

Lightning 2.6 saves ``last.ckpt`` only where a step- or epoch-triggered checkpoint is due, and at the end of training
only if none was saved before. A run of 160 steps with ``every_n_train_steps: 100`` therefore ends with
``last.ckpt`` at step 100, and the next stage silently starts from weights 60 steps old (the demo did, until this
class). Every config of this project uses this class instead.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(LightningModelCheckpoint):
    """:class:`lightning.pytorch.callbacks.ModelCheckpoint` whose ``last.ckpt`` (``save_last: true``) always holds the
    weights training ended with. Takes the same arguments; ``save_last: link`` is refused, since a link can only point
    to a checkpoint that exists."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_last == "link":
            raise ValueError("lightning_mf.callbacks.ModelCheckpoint: save_last: link cannot hold the final weights; use save_last: true")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # skips a step already saved (also when a finished run is fitted again); every rank calls it (FSDP saves collectively)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
