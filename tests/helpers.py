"""Helpers shared by tests (kept out of the package)."""

from __future__ import annotations

import torch

from lightning_mf.data.shards import ShardSummary
from lightning_mf.data.synthetic import PRESETS

TINY_CLIPS = 12


def tiny_summary() -> ShardSummary:
    spec = PRESETS["tiny"].spec
    return ShardSummary(
        fps=spec.fps, sample_rate=spec.sample_rate, height=spec.height, width=spec.width,
        clip_seconds=PRESETS["tiny"].clip_seconds, origin="tests",
    )


def delay_audio(audio: torch.Tensor, samples: int) -> torch.Tensor:
    """Waveforms (B, S) delayed (samples > 0: the audio lags) or advanced (< 0), zero-filled, same length."""
    out = torch.zeros_like(audio)
    if samples >= 0:
        out[:, samples:] = audio[:, : audio.shape[1] - samples]
    else:
        out[:, :samples] = audio[:, -samples:]
    return out
