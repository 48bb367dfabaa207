"""SyncNetTraining: trains the in-repo SyncNet on paired clips; its towers then serve LipSync and Fréchet metrics."""

from __future__ import annotations

import json
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lightning_mf.batch import AVBatch
from lightning_mf.lit.base import predictions_dir
from lightning_mf.metrics.lipsync import LipSync, clip_scores, offset_distances
from lightning_mf.models.syncnet import SyncNet
from lightning_mf.objectives.contrastive import sync_contrastive_loss
from lightning_mf.spec import AVSpec

__all__ = ["SyncNetTraining"]


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-3)


class SyncNetTraining(L.LightningModule):
    """Contrastive training of :class:`~lightning_mf.models.syncnet.SyncNet`; validation and test report LSE-D/C and
    the AV offset of the held-out split; predict scores every window's sync (a check of a dataset's alignment).

    Args:
        spec: rates and frame size (linked from ``data.spec``).
        window: video frames per embedding.
        dim: embedding size.
        max_shift: time-shifted negatives at offsets -max_shift..max_shift frames.
        other_clips: also use the other clips of the batch as negatives.
        temperature: softmax temperature of the contrastive loss.
        max_offset: offsets scored by LipSync in validation, test and predict (must be shorter than the windows).
        optimizer: optimizer factory.
        predict_dir: where ``predict`` writes ``sync.jsonl``, one line per window (default:
            ``<trainer log dir>/predictions``).
    """

    def __init__(
        self, spec: AVSpec = AVSpec(), window: int = 5, dim: int = 64, max_shift: int = 6, other_clips: bool = False,
        temperature: float = 0.1, max_offset: int = 5,
        optimizer: OptimizerCallable = _adam, predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["predict_dir"])  # an output option: a checkpoint must not override it
        self.net = SyncNet(spec, window=window, dim=dim)
        self.max_shift, self.other_clips, self.temperature, self.optimizer = max_shift, other_clips, temperature, optimizer
        self.lipsync = LipSync(max_offset=max_offset)  # fed embeddings: the net is not stored twice
        self.max_offset, self.predict_dir = max_offset, predict_dir
        self.predicted: list[dict[str, Any]] = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.net.parameters())

    def _step(self, batch: AVBatch, stage: Literal["train", "val", "test"]) -> Tensor:
        video, audio = self.net.embed_video(batch.video), self.net.embed_audio(batch.audio)
        loss, accuracy = sync_contrastive_loss(video, audio, self.max_shift, self.temperature, self.other_clips)
        held_out = stage != "train"
        on = {"on_step": not held_out, "on_epoch": held_out, "batch_size": batch.size, "sync_dist": held_out}
        self.log(f"{stage}/sync_loss", loss, prog_bar=True, **on)
        self.log(f"{stage}/sync_acc", accuracy, **on)
        if held_out:
            self.lipsync.update_embeddings(video, audio)
        return loss

    def training_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        """The validation measures under ``test/`` (``lightning-mf test``, on the held-out split)."""
        return self._step(batch, "test")

    def _log_lipsync(self, stage: str) -> None:
        result = self.lipsync.compute()  # reduced over ranks by torchmetrics
        self.log_dict({f"{stage}/{k}": v.float() for k, v in result.items()})
        self.lipsync.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_lipsync("val")

    def on_test_epoch_end(self) -> None:
        self._log_lipsync("test")

    def on_predict_epoch_start(self) -> None:
        self.predicted = []

    def predict_step(self, batch: AVBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Per window: its clip, first frame, AV offset in frames (positive: audio lags), LSE-D and LSE-C."""
        distances = offset_distances(self.net.embed_video(batch.video).double(), self.net.embed_audio(batch.audio).double(), self.max_offset)
        scores = {k: v.tolist() for k, v in clip_scores(distances).items()}
        rows = [
            {"key": key, "start_frame": int(start), **{k: v[i] for k, v in scores.items()}}
            for i, (key, start) in enumerate(zip(batch.keys, batch.start_frame.tolist()))
        ]
        self.predicted += rows
        return rows

    def on_predict_epoch_end(self) -> None:
        """Write ``sync.jsonl`` (``sync-rank<r>.jsonl`` per rank when there are several)."""
        root = predictions_dir(self.trainer, self.predict_dir)
        root.mkdir(parents=True, exist_ok=True)
        name = "sync.jsonl" if self.trainer.world_size == 1 else f"sync-rank{self.global_rank}.jsonl"
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in self.predicted))
