import pytest

from lightning_mf.spec import AVSpec


def test_derived_counts_tile_the_time_axis() -> None:
    spec = AVSpec(fps=25, sample_rate=16000, height=64, width=64, frames_per_chunk=3, mel_hop=160)
    assert (spec.samples_per_frame, spec.mels_per_frame) == (640, 4)
    assert (spec.samples_per_chunk, spec.mels_per_chunk) == (1920, 12)
    assert spec.chunk_seconds == pytest.approx(0.12)
    assert spec.frames_in(2.0) == 50


def test_default_is_the_tiny_preset() -> None:
    spec = AVSpec()
    assert (spec.fps, spec.sample_rate, spec.height, spec.width, spec.samples_per_frame, spec.mels_per_frame) == (16, 16000, 32, 32, 1000, 4)


def test_rates_that_do_not_tile_are_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"sample_rate=16000 is not a multiple of fps=24"):
        AVSpec(fps=24, sample_rate=16000)
    with pytest.raises(ValueError, match=r"mel_hop=300 does not divide the 1000 samples.*use a divisor such as"):
        AVSpec(mel_hop=300)
    with pytest.raises(ValueError, match=r"AVSpec.frames_per_chunk must be a positive integer"):
        AVSpec(frames_per_chunk=0)


def test_spec_is_immutable() -> None:
    with pytest.raises(AttributeError):
        AVSpec().fps = 25  # type: ignore[misc]
