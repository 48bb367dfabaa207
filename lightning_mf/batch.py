"""The batch that the data pipeline hands to every LightningModule: the contract between data and training."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["AVBatch", "AVWindow", "Cond", "token_id"]


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

    def to(self, device: torch.device | str) -> AVBatch:
        """The same windows with their tensors on ``device`` (metadata stays as is)."""
        return AVBatch(self.video.to(device), self.audio.to(device), self.start_frame.to(device), self.keys, self.meta)

    def pin_memory(self) -> AVBatch:
        """Called by the DataLoader when ``pin_memory=True``."""
        self.video, self.audio, self.start_frame = self.video.pin_memory(), self.audio.pin_memory(), self.start_frame.pin_memory()
        return self


def token_id(token: str, vocab_size: int) -> int:
    """Stable id in 1..vocab_size of a transcript token (crc32: Python's own hash is salted per process)."""
    return 1 + zlib.crc32(token.encode()) % vocab_size


@dataclass
class Cond:
    """Timestamped transcript tokens for cross-attention (METHOD §3 "Conditioning").

    Column 0 is the null token (id 0, time 0), always valid, so a row whose transcript is dropped for
    classifier-free guidance attends to the null token alone. Each token keeps its span (``start``, ``end``) besides
    its midpoint, for models that read the transcript frame by frame (``TowerConfig.transcript_track``).
    """

    ids: Tensor  # (B, T) long; 0 = null, 1..vocab_size = hashed tokens
    time: Tensor  # (B, T) float; token midpoint in seconds from the window start
    mask: Tensor  # (B, T) bool; valid tokens
    start: Tensor | None = None  # (B, T) float; token start in seconds (default: its midpoint)
    end: Tensor | None = None  # (B, T) float; token end in seconds (default: its midpoint, an empty span)

    def __post_init__(self) -> None:
        self.start = self.time if self.start is None else self.start
        self.end = self.time if self.end is None else self.end

    @staticmethod
    def null(batch: int, device: torch.device | str | None = None) -> Cond:
        zeros = torch.zeros(batch, 1, device=device)
        return Cond(
            ids=torch.zeros(batch, 1, dtype=torch.long, device=device), time=zeros,
            mask=torch.ones(batch, 1, dtype=torch.bool, device=device),
        )

    @staticmethod
    def from_transcripts(transcripts: list[list[dict[str, Any]]], vocab_size: int, device: torch.device | str | None = None) -> Cond:
        """Pad ``[{"token", "start", "end"}, ...]`` per row (times relative to the window start) into tensors."""
        width = 1 + max((len(t) for t in transcripts), default=0)
        ids = torch.zeros(len(transcripts), width, dtype=torch.long)
        start, end = torch.zeros(len(transcripts), width), torch.zeros(len(transcripts), width)
        mask = torch.zeros(len(transcripts), width, dtype=torch.bool)
        mask[:, 0] = True
        for row, entries in enumerate(transcripts):
            for col, entry in enumerate(entries, start=1):
                ids[row, col] = token_id(str(entry["token"]), vocab_size)
                start[row, col], end[row, col] = float(entry["start"]), float(entry["end"])
                mask[row, col] = True
        return Cond(ids.to(device), ((start + end) / 2).to(device), mask.to(device), start.to(device), end.to(device))

    def drop(self, keep: Tensor) -> Cond:
        """Rows where ``keep`` (B,) is False lose their transcript (condition dropout for CFG)."""
        mask = self.mask & (keep[:, None] | (torch.arange(self.mask.shape[1], device=self.mask.device) == 0))
        return Cond(self.ids, self.time, mask, self.start, self.end)

    def spoken_at(self, times: Tensor, silence: int) -> Tensor:
        """Id of the token spoken at each of ``times`` (N,) seconds, per row: (B, N) long; ``silence`` where the
        row's transcript has a pause there, 0 where the row has no transcript (the null row of CFG)."""
        inside = (self.start[:, None, :] <= times[None, :, None]) & (times[None, :, None] < self.end[:, None, :])
        inside &= self.mask[:, None, :]  # (B, N, T); the null token's span is empty
        spoken = (inside * self.ids[:, None, :]).amax(-1)  # (B, N); overlapping tokens: the larger id
        has_words = self.mask[:, 1:].any(-1, keepdim=True)  # (B, 1)
        return torch.where(inside.any(-1), spoken, torch.where(has_words, silence, 0))

    def unconditional(self) -> Cond:
        return self.drop(torch.zeros(self.ids.shape[0], dtype=torch.bool, device=self.ids.device))
