"""Identity drift: ~0 on faithful synthetic clips (bob, blinks, mouth), large after a recolouring, per window."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from lightning_mf.data.synthetic import PRESETS, synthesize_clip
from lightning_mf.metrics.drift import IdentityDrift, colour_drift

# A faithful clip keeps each region's median colour exactly: anything above a quarter of a colour level (L1 over
# RGB in 0..255) is a false alarm, while a visible recolouring moves it by tens of levels.
STABLE = 0.25


@lru_cache(maxsize=None)
def _video(preset: str, seconds: float = 2.0) -> torch.Tensor:
    clips = [synthesize_clip(s, PRESETS[preset].spec, seconds) for s in range(4)]
    return torch.stack([torch.from_numpy(c.video).permute(0, 3, 1, 2) for c in clips])  # (B, T, 3, H, W)


def _recoloured(video: torch.Tensor, from_fraction: float, offset: int = 40) -> torch.Tensor:
    """Every colour moved by ``offset`` levels (mirrored near 255) from ``from_fraction`` of the clip on."""
    out = video.clone().int()
    start = int(from_fraction * video.shape[1])
    moved = out[:, start:] + offset
    out[:, start:] = torch.where(moved > 255, out[:, start:] - offset, moved)
    return out.to(torch.uint8)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_faithful_clips_do_not_drift(preset: str) -> None:
    metric = IdentityDrift(fps=PRESETS[preset].spec.fps)
    metric.update(_video(preset))
    result = metric.compute()
    assert set(result) == {f"drift_{k}{ci}" for k in ("w0", "w1", "w2", "mean") for ci in ("", "_ci95")}
    assert all(float(v) < STABLE for v in result.values())


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_recolouring_halfway_shows_in_the_later_windows(preset: str) -> None:
    video = _video(preset)
    stable = IdentityDrift().forward(video)
    metric = IdentityDrift()
    metric.update(_recoloured(video, 0.5))
    result = metric.compute()
    assert float(result["drift_w0"]) < STABLE
    assert result["drift_w2"] > 100  # 40 levels on each of 3 channels (L1 = 120) in both regions
    assert result["drift_w2"] > 10 * max(float(stable["drift_w2"]), 0.1)
    assert result["drift_w0"] < result["drift_w1"] < result["drift_w2"]  # w1 straddles the change


def test_windows_are_fractions_of_the_clip_or_seconds() -> None:
    video = _video("tiny")  # 32 frames at 16 fps
    late = _recoloured(video, 0.625)  # from frame 20 on: only the last window [0.6, 1] (frames 20..31)
    result = IdentityDrift().forward(late)
    assert float(result["drift_w0"]) < STABLE and float(result["drift_w1"]) < STABLE and result["drift_w2"] > 30
    seconds = IdentityDrift(fps=16, window_seconds=(0.5, 1.25, 2.0)).forward(late)  # frame 20 starts at 1.25 s
    assert float(seconds["drift_w1"]) < STABLE and seconds["drift_w2"] > 30


def test_drift_accumulates_exactly_over_batches() -> None:
    video = _recoloured(_video("tiny"), 0.5)
    whole, halves = IdentityDrift(), IdentityDrift()
    whole.update(video)
    halves.update(video[:1])
    halves.update(video[1:])
    a, b = whole.compute(), halves.compute()
    assert all(torch.allclose(a[k], b[k]) for k in a)
    per_clip = colour_drift(video).double().mean(1)  # (B,)
    assert torch.isclose(a["drift_mean_ci95"].double(), 1.96 * per_clip.std() / len(per_clip) ** 0.5, rtol=1e-5)
    last_window = colour_drift(video).double()[:, 20:].mean(1)  # frames 20..31 of 32: positions 0.625..0.97
    assert torch.isclose(a["drift_w2_ci95"].double(), 1.96 * last_window.std() / len(last_window) ** 0.5, rtol=1e-5)
    mixed = torch.cat([video[:1], _video("tiny")[1:]])  # one clip recoloured, the others faithful
    assert IdentityDrift().forward(mixed)["drift_w2_ci95"] > 10


def test_bad_inputs_name_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"video must be \(B, T, 3, H, W\)"):
        colour_drift(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="must end at 1.0"):
        IdentityDrift(windows=(0.2, 0.6))
    with pytest.raises(ValueError, match="increasing"):
        IdentityDrift(windows=(0.6, 0.2, 1.0))
    with pytest.raises(ValueError, match="before any update"):
        IdentityDrift().compute()


def test_a_noise_clip_drifts_from_the_frame_it_was_conditioned_on() -> None:
    """Against its own first frame a clip of noise is "stable"; against the conditioning frame it is not."""
    video = _video("tiny")
    noise = torch.randint(0, 256, video.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    own = IdentityDrift().forward(noise)
    conditioned = IdentityDrift().forward(noise, video[:, 0])
    faithful = IdentityDrift().forward(video, video[:, 0])
    assert float(faithful["drift_mean"]) < STABLE
    assert float(conditioned["drift_mean"]) > 20 and float(conditioned["drift_mean"]) > 10 * max(float(own["drift_mean"]), 0.1)
    with pytest.raises(ValueError, match="reference must be"):
        IdentityDrift().forward(video, video[:1, 0])
