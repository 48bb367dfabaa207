"""Timing split by modality on synthetic clips: real clips follow their transcript, and each way of breaking one
modality (a delay, silence, noise, another character's voice, a frozen mouth) scores clearly worse."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from helpers import delay_audio

from lightning_mf.data.synthetic import PRESETS, synthesize_clip
from lightning_mf.metrics.timing import TranscriptTiming
from lightning_mf.metrics.vowels import SpeechFrameErrorRate, train_vowel_classifier

SPEC = PRESETS["tiny"].spec
SEEDS = tuple(range(8))


@lru_cache(maxsize=None)
def _clips() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Video (B, T, 3, H, W) uint8, audio (B, S), mouth colour (B, 3), true opening (B, T), transcripts."""
    clips = [synthesize_clip(s, SPEC, 2.0) for s in SEEDS]
    video = torch.stack([torch.from_numpy(c.video).permute(0, 3, 1, 2) for c in clips])
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))
    mouth = torch.tensor([c.meta["ground_truth"]["identity"]["mouth"] for c in clips])
    truth = torch.tensor([c.meta["ground_truth"]["mouth_open"] for c in clips])
    return video, audio, mouth, truth, [c.meta["transcript"] for c in clips]


def _timing(truth: torch.Tensor, **media: torch.Tensor) -> dict[str, float]:
    metric = TranscriptTiming(SPEC.samples_per_frame, max_lag=4)
    half = truth.shape[0] // 2
    for part in (slice(0, half), slice(half, None)):  # two updates: the states gather per clip
        metric.update(truth[part], **{k: v[part] for k, v in media.items()})
    return {k: float(v) for k, v in metric.compute().items()}


def test_real_clips_follow_their_transcript_in_both_modalities() -> None:
    video, audio, mouth, truth, _ = _clips()
    scores = _timing(truth, video=video, audio=audio)
    assert scores["video_timing_r"] > 0.9 and scores["audio_timing_r"] > 0.9
    assert scores["video_timing_lag"] == 0 and scores["audio_timing_lag"] == 0
    assert 0 < scores["video_timing_r_ci95"] < 0.05 and 0 < scores["audio_timing_r_ci95"] < 0.05
    assert _timing(truth, video=video, mouth_colour=mouth)["video_timing_r"] > 0.9


def test_each_broken_modality_scores_clearly_worse_and_a_delay_is_found_with_its_sign() -> None:
    video, audio, _, truth, _ = _clips()
    spf = SPEC.samples_per_frame
    late = _timing(truth, audio=delay_audio(audio, 3 * spf))
    assert late["audio_timing_r"] < 0.5 and late["audio_timing_lag"] == 3  # positive: the audio runs late
    early = _timing(truth, audio=delay_audio(audio, -2 * spf))
    assert early["audio_timing_lag"] == -2
    other_voice = torch.roll(audio, 1, dims=0)  # each clip gets another character's speech
    noise = 0.1 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    for broken in (torch.zeros_like(audio), noise, other_voice):
        assert _timing(truth, audio=broken)["audio_timing_r"] < 0.3
    frozen = video[:, :1].expand_as(video)  # the first frame held: the mouth never moves
    frozen_scores = _timing(truth, video=frozen)
    assert frozen_scores["video_timing_r"] == 0.0 and "video_timing_lag" not in frozen_scores  # no lag to report
    assert "audio_timing_lag" not in _timing(truth, audio=torch.zeros_like(audio))
    assert _timing(truth, video=torch.roll(video, 1, dims=0))["video_timing_r"] < 0.3  # another clip's mouth


def test_timing_refuses_misaligned_truth_and_an_empty_compute() -> None:
    video, audio, _, truth, _ = _clips()
    metric = TranscriptTiming(SPEC.samples_per_frame)
    with pytest.raises(ValueError, match=r"audio gives \(8, 32\) frames per clip but truth is \(8, 31\)"):
        metric.update(truth[:, :-1], audio=audio)
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()


def test_the_frame_error_rate_counts_silence_as_a_class() -> None:
    _, audio, _, _, transcripts = _clips()
    classifier = train_vowel_classifier(SPEC, num_clips=24, steps=200)

    def rate(waves: torch.Tensor, said: list = transcripts) -> float:
        metric = SpeechFrameErrorRate(classifier)
        metric.update(waves, said)
        return float(metric.compute()["speech_frame_error"])

    real = rate(audio)
    assert real < 0.15
    for broken in (torch.zeros_like(audio), 0.1 * torch.randn(audio.shape), torch.roll(audio, 1, dims=0)):
        assert rate(broken) > real + 0.2  # silence, noise, another character's speech
    voiced = [[{"token": "a", "start": 0.0, "end": 2.0}]] * len(transcripts)  # a transcript that never pauses
    assert rate(audio, voiced) > real + 0.2

