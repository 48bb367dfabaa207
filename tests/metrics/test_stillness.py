"""Background flicker and mouth motion: real clips still and moving, grain seen as grain, a still mouth as still, and
the clip distances that cannot tell the two apart (why these metrics exist)."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from lightning_mf.batch import AVBatch
from lightning_mf.data.synthetic import PRESETS
from lightning_mf.metrics.oracle import mouth_opening
from lightning_mf.metrics.scoring import GRAIN_STD, Scorer, copy_first_frame, reference_rows
from lightning_mf.metrics.stillness import BackgroundFlicker, MouthMotion, background_flicker
from tests.helpers import synthetic_batch


@lru_cache(maxsize=None)
def _clips(first: int = 0, count: int = 6) -> AVBatch:
    return synthetic_batch(range(first, first + count), seconds=2.0)


def _mouths(batch: AVBatch) -> torch.Tensor:
    return torch.tensor([m["ground_truth"]["identity"]["mouth"] for m in batch.meta], dtype=torch.float32)


def _noisy(video: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(seed))
    return (video.float() + std * noise).round().clamp(0, 255).to(torch.uint8)


def test_real_clips_have_a_still_background() -> None:
    flicker = background_flicker(_clips().video)
    assert flicker.shape == (6,)
    assert float(flicker.max()) < 0.05  # the bobbing face barely reaches the watched background: a hundredth of a level


@pytest.mark.parametrize("std", [2.0, 6.0])
def test_grain_scores_its_size(std: float) -> None:
    video = _clips().video
    metric = BackgroundFlicker()
    metric.update(_noisy(video, std), video[:, 0])
    result = metric.compute()
    # |difference of two N(0, std^2)| has mean 2 std / sqrt(pi) = 1.128 std (rounding adds a little, clipping at
    # 0 and 255 removes some on saturated backgrounds)
    assert float(result["flicker"]) == pytest.approx(1.128 * std, rel=0.15)
    assert 0 < float(result["flicker_ci95"]) < 0.1 * float(result["flicker"])


def test_flicker_watches_the_background_only() -> None:
    """Changes inside the face (here: the whole face repainted every other frame) do not count; the same change in
    the background does."""
    batch = _clips(count=2)
    video = batch.video.clone()
    first = video[:, 0].float()
    corner = (first - first[:, :, :1, :1]).abs().sum(1) < 1  # (B, H, W): pixels of the border's colour
    face = ~corner
    flashed = video.clone()
    flashed[:, 1::2] = torch.where(face[:, None, None], 255 - flashed[:, 1::2], flashed[:, 1::2])
    assert float(background_flicker(flashed).max()) < 0.05
    flashed = video.clone()
    flashed[:, 1::2] = torch.where(corner[:, None, None], 255 - flashed[:, 1::2], flashed[:, 1::2])
    assert float(background_flicker(flashed).min()) > 50


def test_flicker_is_measured_against_the_given_reference_frame() -> None:
    """The watched background is the reference frame's (for generated clips: the conditioning frame's), not the clip's
    own first frame: noise inside this character's face is unseen against its own frame and seen against a frame of
    the background's colour alone."""
    video = _clips(count=2).video
    first = video[:, 0]
    face = (first.float() - first[:, :, :1, :1]).abs().sum(1) >= 1  # (B, H, W): everything but the border's colour
    noisy = torch.where(face[:, None, None], _noisy(video, 40.0), video)
    empty = first[:, :, :1, :1].expand_as(first)  # (B, 3, H, W): no face, all background
    assert float(background_flicker(noisy, first).max()) < 0.05
    assert float(background_flicker(noisy).max()) < 0.05  # the default reference: the clip's own first frame
    assert float(background_flicker(noisy, empty).min()) > 1


def test_mouth_motion_is_the_spread_of_the_opening() -> None:
    batch = _clips()
    metric = MouthMotion()
    metric.update(batch.video, _mouths(batch))
    result = metric.compute()
    expected = mouth_opening(batch.video, _mouths(batch)).std(dim=1)  # (B,) pixels
    assert float(result["mouth_motion"]) == pytest.approx(float(expected.mean()), rel=1e-5)
    assert float(result["mouth_motion"]) > 0.5  # real mouths open by pixels
    still = MouthMotion()
    still.update(copy_first_frame(batch, ("video",))["video"], _mouths(batch))
    assert float(still.compute()["mouth_motion"]) == 0.0
    noisy = MouthMotion()
    noisy.update(_noisy(batch.video, GRAIN_STD), _mouths(batch))
    assert float(noisy.compute()["mouth_motion"]) == pytest.approx(float(result["mouth_motion"]), rel=0.15)  # grain is not motion


def test_errors() -> None:
    video = _clips(count=2).video
    with pytest.raises(ValueError, match="at least 2 frames"):
        background_flicker(video[:, :1])
    with pytest.raises(ValueError, match="at least 2 frames"):
        MouthMotion().update(video[:, :1])
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        background_flicker(video[0])
    with pytest.raises(ValueError, match="tolerance"):
        BackgroundFlicker(tolerance=0)
    with pytest.raises(ValueError, match="before any update"):
        BackgroundFlicker().compute()
    with pytest.raises(ValueError, match="before any update"):
        MouthMotion().compute()


def test_clip_distances_read_grain_as_motion_and_the_new_rows_do_not() -> None:
    """The reason for these metrics, and for the ``copy first frame + grain`` floor: grain alone lowers FD clips and
    FD motion well below the still copy's, while flicker and mouth motion place it with the copy."""
    conditions, others = _clips(0, 8), _clips(8, 8)
    rows = reference_rows(Scorer(PRESETS["tiny"].spec, ("video", "audio"), vowel_classifier_clips=0, bootstraps=0), conditions, others)
    copy, grain, real = rows["copy first frame"], rows["copy first frame + grain"], rows["real (held-out)"]
    for metric in ("fd_clips", "fd_motion"):
        assert grain[metric] < 0.6 * copy[metric], (metric, grain[metric], copy[metric])
    assert grain["flicker"] == pytest.approx(1.128 * GRAIN_STD, rel=0.15) and copy["flicker"] == 0 and real["flicker"] < 0.05
    assert grain["mouth_motion"] < 0.1 * real["mouth_motion"] and copy["mouth_motion"] == 0
    assert grain["drift_mean"] < 2  # i.i.d. grain leaves the median colours where they were


def test_audio_only_scoring_has_no_grain_row() -> None:
    conditions, others = _clips(0, 4), _clips(4, 4)
    rows = reference_rows(Scorer(PRESETS["tiny"].spec, ("audio",), vowel_classifier_clips=0, bootstraps=0), conditions, others)
    assert list(rows) == ["real (held-out)", "real, other characters", "copy first frame"]
    assert not any("flicker" in k or "mouth_motion" in k for row in rows.values() for k in row)
