"""SyncNetTraining: trains the in-repo SyncNet on paired clips; its towers then serve LipSync and Fréchet metrics."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightning_mf.batch import AVBatch
from lightning_mf.metrics.lipsync import LipSync
from lightning_mf.models.syncnet import SyncNet
from lightning_mf.objectives.contrastive import sync_contrastive_loss
from lightning_mf.spec import AVSpec

__all__ = ["SyncNetTraining"]


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-3)


class SyncNetTraining(L.LightningModule):
    """Contrastive training of :class:`~lightning_mf.models.syncnet.SyncNet`; validation reports LSE-D/C and offset.

    Args:
        spec: rates and frame size (linked from ``data.spec``).
        window: video frames per embedding.
        dim: embedding size.
        max_shift: time-shifted negatives at offsets -max_shift..max_shift frames.
        other_clips: also use the other clips of the batch as negatives.
        temperature: softmax temperature of the contrastive loss.
        max_offset: offsets scored by the validation LipSync (must be shorter than the windows).
        optimizer: optimizer factory.
    """

    def __init__(
        self, spec: AVSpec = AVSpec(), window: int = 5, dim: int = 64, max_shift: int = 6, other_clips: bool = False,
        temperature: float = 0.1, max_offset: int = 5,
        optimizer: OptimizerCallable = _adam,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SyncNet(spec, window=window, dim=dim)
        self.max_shift, self.other_clips, self.temperature, self.optimizer = max_shift, other_clips, temperature, optimizer
        self.lipsync = LipSync(max_offset=max_offset)  # fed embeddings: the net is not stored twice

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.net.parameters())

    def _step(self, batch: AVBatch, stage: Literal["train", "val"]) -> Tensor:
        video, audio = self.net.embed_video(batch.video), self.net.embed_audio(batch.audio)
        loss, accuracy = sync_contrastive_loss(video, audio, self.max_shift, self.temperature, self.other_clips)
        on = {"on_step": stage == "train", "on_epoch": stage == "val", "batch_size": batch.size}
        self.log(f"{stage}/sync_loss", loss, prog_bar=True, **on)
        self.log(f"{stage}/sync_acc", accuracy, **on)
        if stage == "val":
            self.lipsync.update_embeddings(video, audio)
        return loss

    def training_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        result = self.lipsync.compute()
        self.log_dict({f"val/{k}": v.float() for k, v in result.items()})
        self.lipsync.reset()
