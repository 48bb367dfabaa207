"""Oracle lip sync on synthetic clips: the measured mouth follows the ground truth, and known shifts are found."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from helpers import delay_audio

from lightning_mf.data.synthetic import PRESETS, synthesize_clip
from lightning_mf.metrics.oracle import OracleSync, audio_energy, best_lag, lag_correlations, mouth_opening

SEEDS = (0, 1, 2, 3, 4, 5)


@lru_cache(maxsize=None)
def _clips(preset: str, seeds: tuple[int, ...] = SEEDS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Video (B, T, 3, H, W) uint8, audio (B, S), mouth colour (B, 3), ground-truth mouth opening (B, T)."""
    clips = [synthesize_clip(s, PRESETS[preset].spec, 2.0) for s in seeds]
    video = torch.stack([torch.from_numpy(c.video).permute(0, 3, 1, 2) for c in clips])
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))
    mouth = torch.tensor([c.meta["ground_truth"]["identity"]["mouth"] for c in clips])
    truth = torch.tensor([c.meta["ground_truth"]["mouth_open"] for c in clips])
    return video, audio, mouth, truth


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("given_colour", [True, False])
def test_measured_mouth_opening_tracks_ground_truth(preset: str, given_colour: bool) -> None:
    video, _, mouth, truth = _clips(preset)
    measured = mouth_opening(video, mouth if given_colour else None)  # (B, T)
    assert measured.shape == truth.shape
    for m, t in zip(measured, truth):
        assert np.corrcoef(m.numpy(), t.numpy())[0, 1] > 0.9
    assert measured.max() > 1.0  # a height in pixels, not a fraction


def test_audio_energy_is_per_frame_rms() -> None:
    audio = torch.cat([torch.full((1, 4), 0.5), torch.tensor([[1.0, -1.0, 1.0, -1.0]])], dim=1)  # (1, 8)
    assert torch.allclose(audio_energy(audio, 4), torch.tensor([[0.5, 1.0]]))


def test_best_lag_sign_on_a_known_series() -> None:
    base = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    video = base[:, 5:35]
    audio_late = base[:, 2:32]  # audio[t + 3] == video[t]: the audio lags by 3 frames
    lag, corr = best_lag(video, audio_late, max_lag=5)
    assert int(lag) == 3 and corr > 0.999
    lag, _ = best_lag(video, base[:, 8:38], max_lag=5)
    assert int(lag) == -3
    corrs, valid = lag_correlations(video, torch.ones_like(video), max_lag=2)  # silence: undefined, not counted
    assert not valid.any() and (corrs == 0).all()


def test_oracle_sync_on_real_clips_finds_zero_and_known_shifts() -> None:
    video, audio, mouth, _ = _clips("tiny")
    spf = PRESETS["tiny"].spec.samples_per_frame
    results = {}
    for shift in (0, 3, -3):
        metric = OracleSync(spf, max_lag=5)
        metric.update(video, delay_audio(audio, shift * spf))  # colours estimated from the frames
        results[shift] = metric.compute()
        assert int(results[shift]["oracle_sync_lag"]) == shift  # positive: audio delayed relative to the video
    assert results[0]["oracle_sync_corr"] > 0.8
    assert torch.allclose(results[0]["oracle_sync_best_corr"], results[0]["oracle_sync_corr"])
    assert results[3]["oracle_sync_corr"] < 0.5 < results[3]["oracle_sync_best_corr"]


def test_oracle_sync_rejects_audio_of_another_clip() -> None:
    video, audio, mouth, _ = _clips("tiny")
    metric = OracleSync(PRESETS["tiny"].spec.samples_per_frame, max_lag=5)
    metric.update(video, audio.roll(1, dims=0), mouth)
    assert abs(float(metric.compute()["oracle_sync_corr"])) < 0.3


def test_oracle_sync_accumulates_exactly_over_batches() -> None:
    video, audio, mouth, _ = _clips("small")
    spf = PRESETS["small"].spec.samples_per_frame
    whole, halves = OracleSync(spf), OracleSync(spf)
    whole.update(video, audio, mouth)
    halves.update(video[:2], audio[:2], mouth[:2])
    halves.update(video[2:], audio[2:], mouth[2:])
    a, b = whole.compute(), halves.compute()
    assert all(torch.allclose(a[k].double(), b[k].double(), atol=1e-6) for k in a)
    assert a["oracle_sync_corr"] > 0.8 and int(a["oracle_sync_lag"]) == 0
    per_clip = lag_correlations(mouth_opening(video, mouth), audio_energy(audio, spf), 0)[0][:, 0]  # (B,) r at lag 0
    assert torch.isclose(a["oracle_sync_corr_ci95"].double(), 1.96 * per_clip.std() / len(per_clip) ** 0.5, rtol=1e-4)


def test_bad_inputs_name_what_was_expected() -> None:
    video = torch.zeros(2, 8, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"video must be \(B, T, 3, H, W\)"):
        mouth_opening(video[0])
    with pytest.raises(ValueError, match=r"mouth_colour must be \(B, 3\)"):
        mouth_opening(video, torch.zeros(3))
    with pytest.raises(ValueError, match="samples_per_frame=100"):
        audio_energy(torch.zeros(2, 250), 100)
    with pytest.raises(ValueError, match=r"audio must be \(B, S\)"):
        audio_energy(torch.zeros(250), 50)
    with pytest.raises(ValueError, match="max_lag=7"):
        best_lag(torch.randn(2, 8), torch.randn(2, 8), max_lag=7)
    with pytest.raises(ValueError, match="video has 8 frames"):
        OracleSync(100).update(video, torch.zeros(2, 900))
    with pytest.raises(ValueError, match="before any update"):
        OracleSync(100).compute()
