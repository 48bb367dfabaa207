"""The transcript probe tells a model that copies its history from one that follows the transcript, by value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from test_swapped_transcripts import _clips

from lightning_mf.lit import JointTraining, UniModalPretraining
from lightning_mf.lit.base import CodecConfig
from lightning_mf.metrics.oracle import mouth_opening
from lightning_mf.metrics.transcript_probe import mouth_colours, transcript_probe
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
        real = mouth_opening(clips.video, mouth_colours(clips))
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
    real = scores(sample_on(module, clips, "real", cfg=1.0, ctx_s=0.0), clips, module.spec.frames_per_chunk)
    assert real["video_r"] > 0.95 and real["l1_to_real"] < 1.0  # the real frames, to rounding
    truth = mouth_opening(clips.video, mouth_colours(clips))
    assert real["mouth_motion"] == pytest.approx(float(truth.std(dim=1).mean()), rel=0.05)
    still = sample_on(module, clips, "still", cfg=1.0, ctx_s=0.0)
    assert (still.float() - clips.video[:, :1].float()).abs().mean() < 1.0  # every frame is the first
    assert scores(still, clips, module.spec.frames_per_chunk)["mouth_motion"] < 0.05


def test_history_sampling_own_history_with_every_chunk_real_is_the_real_history() -> None:
    """The oracle of ``--real-chunks``: streamed on its own history with every chunk replaced by the real one, the
    model samples each chunk exactly as on the real (teacher-forced) history, from the same noise. One real chunk
    changes the chunks after it and none before, and the frames scored are the model's own, not the real ones."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from history_sampling import sample_on, scores

    from lightning_mf.flow import grid
    from lightning_mf.objectives.flow_matching import TeacherForced
    from lightning_mf.sampling.samplers import integrate
    from tests.models.tiny_models import randomize

    clips = _clips(range(3))
    module = UniModalPretraining(
        modality="video", tower=TowerConfig(dim=32, depth=2, heads=2, first_frame_input=True, transcript_track=True),
        codec=CodecConfig(patch=4, tubelet=2), ema_decay=None,
    )
    randomize(module.net, std=0.2, seed=1).eval()
    chunks, n = module.seq.num_chunks(clips), module.seq.tokens_per_chunk("video")
    everything = tuple(range(1, chunks + 1))
    own_real = sample_on(module, clips, "own", cfg=1.0, ctx_s=0.0, real_chunks=everything)
    # the real history from the noise streaming draws: one (B, n, C) block per chunk from a generator seeded 0
    generator = torch.Generator().manual_seed(0)
    noise = torch.cat([torch.randn(clips.size, n, module.seq.token_dim("video"), generator=generator) for _ in everything], dim=1)
    x0 = module.seq.encode(clips)
    with torch.no_grad():
        teacher = TeacherForced(module.net, module.seq, x0, module.prefix(clips), module.condition(clips))
        out = integrate(teacher, {"video": noise}, grid(50, 3.0, few=False))
    real_history = module.seq.decode(out)["video"]
    assert (own_real.float() - real_history.float()).abs().max() <= 1  # uint8 rounding of a float32 difference
    assert (own_real.float() - clips.video.float()).abs().mean() > 20  # the model's samples, not the real frames

    own = sample_on(module, clips, "own", cfg=1.0, ctx_s=0.0)
    second_real = sample_on(module, clips, "own", cfg=1.0, ctx_s=0.0, real_chunks=(2,))
    per = module.spec.frames_per_chunk
    assert torch.equal(second_real[:, : 2 * per], own[:, : 2 * per])  # chunks 1-2: the same samples
    assert (second_real[:, 2 * per :].float() - own[:, 2 * per :].float()).abs().mean() > 1  # the history changed them (0 if substituted after the stream)
    scored = scores(second_real, clips, per, first_chunk=3)
    assert scored["from_chunk"] == 3 and len(scored["l1_per_chunk"]) == chunks
    assert scored["l1_to_real"] == pytest.approx(sum(scored["l1_per_chunk"][2:]) / (chunks - 2), abs=0.1)
    blacked = clips.video.clone()
    blacked[:, : 2 * per] = 0  # chunks 1-2 wrong, the rest the real frames
    tail = scores(blacked, clips, per, first_chunk=3)
    assert tail["l1_to_real"] == 0.0 and tail["video_r"] > 0.95  # only chunks 3.. are scored
    assert tail["l1_per_chunk"][0] > 50 and tail["l1_per_chunk"][2] == 0.0
    joint = JointTraining(tower=TowerConfig(dim=32, depth=1, heads=2), codec=CodecConfig(patch=4, tubelet=2), ema_decay=None)
    assert sample_on(joint, clips, "own", cfg=1.0, ctx_s=0.0, real_chunks=(2,)).shape == clips.video.shape  # audio kept
