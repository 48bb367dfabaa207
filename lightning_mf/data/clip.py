"""The in-memory clip that sources produce and the shard writer stores: frames, audio and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Clip"]


@dataclass
class Clip:
    """One clip: ``video`` (T, H, W, 3) uint8, ``audio`` (T * samples_per_frame,) float32 in [-1, 1].

    ``meta`` must be JSON-serialisable. Keys every source writes: ``fps``, ``sample_rate``, ``num_frames``,
    ``num_samples``, ``source``, ``start``, ``end`` (seconds in the source) and ``transcript`` (a list of
    ``{"token", "start", "end"}`` with times relative to the clip start). Synthetic clips add ``ground_truth``.
    """

    key: str
    video: np.ndarray
    audio: np.ndarray
    fps: int
    sample_rate: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "." in self.key or "/" in self.key:
            raise ValueError(f"clip key {self.key!r} may not contain '.' or '/' (WebDataset splits keys on them)")
        if self.video.dtype != np.uint8 or self.video.ndim != 4 or self.video.shape[-1] != 3:
            raise ValueError(f"clip {self.key}: video must be uint8 (T, H, W, 3), got {self.video.dtype} {self.video.shape}")
        if self.audio.dtype != np.float32 or self.audio.ndim != 1:
            raise ValueError(f"clip {self.key}: audio must be float32 (S,), got {self.audio.dtype} {self.audio.shape}")
        if self.sample_rate % self.fps:
            raise ValueError(f"clip {self.key}: sample_rate={self.sample_rate} is not a multiple of fps={self.fps}")
        expected = self.num_frames * (self.sample_rate // self.fps)
        if self.audio.shape[0] != expected:
            raise ValueError(
                f"clip {self.key}: {self.num_frames} frames at {self.fps} fps need {expected} audio samples at "
                f"{self.sample_rate} Hz, got {self.audio.shape[0]}"
            )

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps
