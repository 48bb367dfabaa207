"""The transcript probe tells a model that copies its history from one that follows the transcript, by value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from test_swapped_transcripts import _clips

from lightning_mf.lit import UniModalPretraining
from lightning_mf.lit.base import CodecConfig
from lightning_mf.metrics.oracle import mouth_opening
from lightning_mf.metrics.transcript_probe import transcript_probe
from lightning_mf.models import TowerConfig
from lightning_mf.sequence import AVSequencer

pytestmark = pytest.mark.filterwarnings("ignore:tokens of .* are wider than the tower")


class CopiesTheHistory(nn.Module):
    """A video "model" that knows each noisy chunk's real frames: the teacher-forced history holds them (chunk k's
    clean copy). Its clean estimate is the real clip, whatever the transcript says."""

    def __init__(self, seq: AVSequencer) -> None:
        super().__init__()
        self.n = seq.tokens_per_chunk("video")

    def forward(self, tokens: dict, d: float = 0.0, cond: object = None, **_: object) -> dict[str, torch.Tensor]:
        t = tokens["video"]
        noisy = ~t.layout.clean
        clean_chunks = t.x[:, t.layout.clean & (t.layout.chunk > 0)]  # history chunks 1..L, in order
        s = t.s[:, noisy][..., None]
        v = torch.zeros_like(t.x)
        v[:, noisy] = (t.x[:, noisy] - clean_chunks) / s  # x0 = x_s - s v = the real chunk
        return {"video": v}


def test_a_model_that_copies_its_history_follows_the_frame_clip_not_the_transcript_given() -> None:
    clips = _clips(range(6))
    module = UniModalPretraining(modality="video", tower=TowerConfig(dim=32, depth=1, heads=2), codec=CodecConfig(patch=4, tubelet=2))
    module.net = module.ema = CopiesTheHistory(module.seq)
    scores = transcript_probe(module, clips, levels=(1.0, 0.5))
    for s in ("1", "0.5"):
        assert scores[f"s{s}_own"] > 0.95 and scores[f"s{s}_frame_clip"] > 0.95  # the real mouths, at any level
        assert scores[f"s{s}_given"] < 0.4  # another clip's timing explains them no better than chance
        # with the first frame as its whole history it copies a mouth that never moves: no timing, no motion
        assert scores[f"s{s}_still"] == 0.0 and scores[f"s{s}_still_motion"] < 0.05
        real = mouth_opening(clips.video, torch.tensor([m["ground_truth"]["identity"]["mouth"] for m in clips.meta], dtype=torch.float32))
        assert scores[f"s{s}_own_motion"] == pytest.approx(float(real.std(dim=1).mean()), rel=0.1)  # the real clips' motion


def test_the_probe_needs_a_video_tower() -> None:
    module = UniModalPretraining(modality="audio", tower=TowerConfig(dim=32, depth=1, heads=2))
    with pytest.raises(ValueError, match="video tower"):
        transcript_probe(module, _clips(range(2)))


def test_history_sampling_samples_each_chunk_on_the_real_or_a_still_history() -> None:
    """benchmarks/history_sampling.py: a model that copies its history gives back the real clip on the real history
    and the first frame, mouth shut, on the still one."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from history_sampling import sample_on, scores

    clips = _clips(range(6))
    module = UniModalPretraining(modality="video", tower=TowerConfig(dim=32, depth=1, heads=2), codec=CodecConfig(patch=4, tubelet=2))
    module.net = module.ema = CopiesTheHistory(module.seq)
    real = scores(sample_on(module, clips, "real", cfg=1.0, ctx_s=0.0), clips)
    assert real["video_r"] > 0.95 and real["l1_to_real"] < 1.0  # the real frames, to rounding
    truth = mouth_opening(clips.video, torch.tensor([m["ground_truth"]["identity"]["mouth"] for m in clips.meta], dtype=torch.float32))
    assert real["mouth_motion"] == pytest.approx(float(truth.std(dim=1).mean()), rel=0.05)
    still = sample_on(module, clips, "still", cfg=1.0, ctx_s=0.0)
    assert (still.float() - clips.video[:, :1].float()).abs().mean() < 1.0  # every frame is the first
    assert scores(still, clips)["mouth_motion"] < 0.05
