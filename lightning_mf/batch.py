"""The batch that the data pipeline hands to every LightningModule: the contract between data and training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["AVBatch", "AVWindow"]


@dataclass
class AVWindow:
    """One aligned window of a clip: audio sample ``start_frame * samples_per_frame`` starts with video frame
    ``start_frame``. ``meta`` holds the window's transcript (times relative to the window start), its slice of the
    ground truth (synthetic clips), and the clip's ``key``/``source``/``start``."""

    key: str
    video: Tensor  # (T, 3, H, W) uint8
    audio: Tensor  # (T * samples_per_frame,) float32 in [-1, 1]
    start_frame: int
    meta: dict[str, Any]


@dataclass  # not frozen: Lightning's apply_to_collection rebuilds dataclasses to move them between devices
class AVBatch:
    """A batch of aligned windows (see :class:`AVWindow`)."""

    video: Tensor  # (B, T, 3, H, W) uint8
    audio: Tensor  # (B, S) float32, S = T * samples_per_frame
    start_frame: Tensor  # (B,) int64, first frame of each window in its clip
    keys: list[str]
    meta: list[dict[str, Any]]

    @property
    def size(self) -> int:
        return int(self.video.shape[0])

    @staticmethod
    def collate(windows: list[AVWindow]) -> AVBatch:
        return AVBatch(
            video=torch.stack([w.video for w in windows]),
            audio=torch.stack([w.audio for w in windows]),
            start_frame=torch.tensor([w.start_frame for w in windows], dtype=torch.long),
            keys=[w.key for w in windows],
            meta=[w.meta for w in windows],
        )

    def pin_memory(self) -> AVBatch:
        """Called by the DataLoader when ``pin_memory=True``."""
        self.video, self.audio, self.start_frame = self.video.pin_memory(), self.audio.pin_memory(), self.start_frame.pin_memory()
        return self
