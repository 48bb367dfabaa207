"""Helpers shared by tests (kept out of the package)."""

from __future__ import annotations

from lightning_mf.data.shards import ShardSummary
from lightning_mf.data.synthetic import PRESETS

TINY_CLIPS = 12


def tiny_summary() -> ShardSummary:
    spec = PRESETS["tiny"].spec
    return ShardSummary(
        fps=spec.fps, sample_rate=spec.sample_rate, height=spec.height, width=spec.width,
        clip_seconds=PRESETS["tiny"].clip_seconds, origin="tests",
    )
