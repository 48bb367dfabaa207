from pathlib import Path

import numpy as np
import pytest

from lightning_mf.data.media import decode_mp4, decode_wav, encode_mp4, encode_wav, read_media


def test_mp4_round_trip_is_lossless() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (9, 24, 40, 3), dtype=np.uint8)
    assert np.array_equal(decode_mp4(encode_mp4(frames, 16)), frames)


def test_wav_round_trip_within_one_lsb() -> None:
    audio = np.random.default_rng(1).uniform(-1, 1, 4000).astype(np.float32)
    decoded, rate = decode_wav(encode_wav(audio, 16000))
    assert rate == 16000 and decoded.shape == audio.shape
    assert np.abs(decoded - audio).max() <= 1 / 32767


def test_read_media_resamples_crops_and_keeps_audio_aligned(tmp_path: Path) -> None:
    # 25 fps 48x64 video whose frame index is written in its pixels, 22.05 kHz audio with a click at 1.0 s.
    frames = np.repeat(np.arange(75, dtype=np.uint8)[:, None, None, None] * 3, 48 * 64 * 3).reshape(75, 48, 64, 3)
    audio = np.zeros(3 * 22050, np.float32)
    audio[22050 : 22050 + 100] = 0.8
    encode_mp4(frames, 25, audio=audio, sample_rate=22050, target=tmp_path / "a.mp4")
    media = read_media(tmp_path / "a.mp4", fps=16, sample_rate=16000, size=(32, 32))
    assert media.frames.shape == (48, 32, 32, 3) and media.frames.dtype == np.uint8
    # target frame i at i/16 s takes the nearest source frame i * 25 / 16 (ties go to the earlier frame)
    expected = np.ceil(np.arange(48) * 25 / 16 - 0.5).astype(int) * 3
    assert np.array_equal(media.frames[:, 16, 16, 0].astype(int), expected)
    assert media.seconds == pytest.approx(3.0)
    click = int(np.argmax(np.abs(media.audio) > 0.3))
    assert abs(click - 16000) <= 2  # AAC priming trimmed: the click stays at 1.0 s


def test_read_media_names_a_missing_audio_track(tmp_path: Path) -> None:
    encode_mp4(np.zeros((4, 16, 16, 3), np.uint8), 16, target=tmp_path / "silent.mp4")
    with pytest.raises(ValueError, match="no audio track"):
        read_media(tmp_path / "silent.mp4", fps=16, sample_rate=16000, size=(16, 16))
