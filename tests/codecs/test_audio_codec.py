"""MelCodec: exact time alignment with video frames, fixed normalisation, faithful deterministic decode."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mf.codecs import MelCodec
from lightning_mf.codecs.audio import FLOOR_TOKEN, LOG_CENTER, LOG_SCALE
from lightning_mf.spec import AVSpec

SPEC = AVSpec()  # 16 fps, 16 kHz, mel_hop 250: 1000 samples and 4 mel frames per video frame


@pytest.fixture(scope="module")
def codec() -> MelCodec:
    return MelCodec(SPEC)


def voice(seconds: float, sample_rate: int = 16000) -> torch.Tensor:
    """Deterministic speech-like audio (S,) peaking at 0.5: harmonics of a 120-180 Hz gliding f0 shaped by
    formant-like peaks at 700 and 1800 Hz, under a syllable-like amplitude envelope."""
    n = round(seconds * sample_rate)
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    f0 = 150 + 30 * torch.sin(2 * math.pi * 1.5 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    x = torch.zeros(n, dtype=torch.float64)
    for h in range(1, 40):
        fh = h * f0
        amp = torch.exp(-(((fh - 700) / 150) ** 2)) + 0.6 * torch.exp(-(((fh - 1800) / 250) ** 2)) + 0.02
        x += amp * (fh < sample_rate / 2) * torch.sin(h * phase)
    x *= torch.sin(math.pi * t / seconds) ** 2 * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))
    return (0.5 * x / x.abs().max()).to(torch.float32)


def mel_power(tokens: torch.Tensor) -> torch.Tensor:
    """Undo the fixed normalisation (floor included): mel power relative to a full-scale sine."""
    return torch.exp(tokens * LOG_SCALE + LOG_CENTER)


@pytest.mark.parametrize("frames", [1, 2, 7, 24])
def test_encode_gives_exactly_mels_per_frame_per_video_frame(codec: MelCodec, frames: int) -> None:
    audio = torch.randn(2, frames * SPEC.samples_per_frame, generator=torch.Generator().manual_seed(frames)) * 0.1
    tokens = codec.encode(audio)
    assert tokens.shape == (2, frames * SPEC.mels_per_frame, 32)
    assert tokens.shape[1] == audio.shape[1] // SPEC.mel_hop
    assert codec.decode(tokens).shape == audio.shape
    assert codec.positions(frames).shape == (tokens.shape[1], 1)


def test_properties_and_positions(codec: MelCodec) -> None:
    assert (codec.token_dim, codec.tokens_per_frame, codec.tokens_per_chunk) == (32, 4, 4 * SPEC.frames_per_chunk)
    pos = codec.positions(3)
    assert pos.dtype == torch.float32
    # Mel frame i stands for samples [i, i + 1) * hop and is stamped at their centre; the 4 frames of video frame 1
    # are centred, on average, on that frame's centre 1.5 / fps (one time axis, sequence.py).
    assert torch.allclose(pos[:, 0], (torch.arange(12) + 0.5) * SPEC.mel_hop / SPEC.sample_rate)
    assert pos[4:8, 0].mean().item() == pytest.approx(1.5 / SPEC.fps)


def test_mel_to_wave_to_mel_keeps_magnitudes(codec: MelCodec) -> None:
    tokens = codec.encode(voice(1.5)[None])
    assert -1.5 < tokens.mean() < -0.5 and 0.7 < tokens.std() < 1.5  # the documented unit-ish scale
    again = codec.encode(codec.decode(tokens))
    # Griffin-Lim drops phase and the mel inverse smears detail inside each band, so only magnitudes are
    # compared: relative L2 error of linear mel power. Measured 0.125 here (0.10-0.12 for 1-2 s clips, almost
    # unchanged from 8 to 64 iterations: the least-squares mel inverse dominates). 0.17 leaves ~35% margin for
    # BLAS/FFT differences, yet fails for a one-mel-frame misalignment (0.24) or a silent/garbled decode (~1).
    error = (mel_power(again) - mel_power(tokens)).norm() / mel_power(tokens).norm()
    assert error < 0.17, f"mel -> wave -> mel relative power error {error:.3f}"


def test_decode_is_deterministic_and_length_exact(codec: MelCodec) -> None:
    tokens = codec.encode(voice(0.5)[None].repeat(2, 1))
    first, second = codec.decode(tokens), codec.decode(tokens)
    assert first.shape == (2, tokens.shape[1] * SPEC.mel_hop)
    assert torch.equal(first, second)


def test_decode_keeps_the_last_hop_of_a_steady_tone(codec: MelCodec) -> None:
    t = torch.arange(8 * SPEC.samples_per_frame) / SPEC.sample_rate
    wave = codec.decode(codec.encode((0.3 * torch.sin(2 * math.pi * 440 * t))[None]))[0]
    tail, body = wave[-SPEC.mel_hop :].pow(2).mean().sqrt(), wave[2000:6000].pow(2).mean().sqrt()
    assert tail > 0.5 * body, "the dropped last STFT frame must not fade out the clip's tail"


def test_burst_lands_in_its_video_frames_mel_frames(codec: MelCodec) -> None:
    spf, mpf = SPEC.samples_per_frame, SPEC.mels_per_frame
    audio = torch.zeros(1, 20 * spf)
    burst = torch.randn(spf, generator=torch.Generator().manual_seed(0)) * 0.3
    audio[0, 10 * spf : 11 * spf] = burst
    energy = codec.encode(audio)[0].mean(dim=1)  # (M,)
    own = energy[10 * mpf : 11 * mpf]
    assert (own > 0).all(), "every mel frame centred inside the burst must be loud"
    # Frames whose window (n_fft / 2 = 512 samples each side of i * hop) misses the burst are exact silence.
    reach = codec.n_fft // 2 // SPEC.mel_hop + 1
    silent = torch.cat([energy[: 10 * mpf - reach], energy[11 * mpf + reach :]])
    assert silent.numel() == 20 * mpf - mpf - 2 * reach
    assert torch.allclose(silent, torch.full_like(silent, FLOOR_TOKEN), atol=1e-6, rtol=0)
    assert 10 * mpf <= int(energy.argmax()) < 11 * mpf


@pytest.mark.parametrize("frame", [0, 5, 10, 19])
def test_click_at_a_video_frame_start_peaks_in_its_first_mel_frame(codec: MelCodec, frame: int) -> None:
    audio = torch.zeros(1, 20 * SPEC.samples_per_frame)
    audio[0, frame * SPEC.samples_per_frame] = 0.5  # mel frame i is centred at sample i * hop
    energy = codec.encode(audio)[0].mean(dim=1)  # (M,)
    assert int(energy.argmax()) == frame * SPEC.mels_per_frame


def test_silence_encodes_to_the_documented_floor(codec: MelCodec) -> None:
    assert FLOOR_TOKEN == pytest.approx(-2.0)
    tokens = codec.encode(torch.zeros(1, 3 * SPEC.samples_per_frame))
    assert torch.allclose(tokens, torch.full_like(tokens, FLOOR_TOKEN), atol=1e-6, rtol=0)


def test_misaligned_audio_and_bad_settings_raise(codec: MelCodec) -> None:
    with pytest.raises(ValueError, match=r"positive multiple of samples_per_frame=1000.*got \(1, 1500\)"):
        codec.encode(torch.zeros(1, 1500))
    with pytest.raises(ValueError, match=r"audio must be \(B, S\).*got \(2000,\)"):
        codec.encode(torch.zeros(2000))
    with pytest.raises(ValueError, match=r"tokens must be \(B, M, 32\)"):
        codec.decode(torch.zeros(1, 8, 16))
    with pytest.raises(ValueError, match=r"M=2 mel frames give 500 samples.*decode at least 3 mel frames"):
        codec.decode(torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match=r"n_fft=1023 must be even"):
        MelCodec(SPEC, n_fft=1023)
    with pytest.raises(ValueError, match=r"n_fft=250 must exceed spec.mel_hop=250"):
        MelCodec(SPEC, n_fft=250)
    with pytest.raises(ValueError, match=r"n_mels=200 is too large for n_fft=512.*use n_mels <= \d+"):
        MelCodec(SPEC, n_mels=200, n_fft=512)


def test_spec_rejects_a_mel_hop_that_does_not_tile() -> None:
    with pytest.raises(ValueError, match=r"mel_hop=300 does not divide the 1000 samples"):
        AVSpec(mel_hop=300)


def test_module_moves_to_float64_and_survives_half_precision() -> None:
    audio = voice(0.25)[None]
    codec64 = MelCodec(SPEC, griffin_lim_iters=4).to(torch.float64)
    assert all(b.dtype == torch.float64 for b in codec64.buffers())
    tokens = codec64.encode(audio.double())
    assert tokens.dtype == torch.float64 and codec64.decode(tokens).dtype == torch.float64
    codec16 = MelCodec(SPEC, griffin_lim_iters=4).to(torch.bfloat16)  # e.g. Lightning "bf16-true"
    tokens16 = codec16.encode(audio.to(torch.bfloat16))
    assert tokens16.dtype == torch.bfloat16 and codec16.decode(tokens16).shape == audio.shape
    assert torch.allclose(tokens16.float(), tokens.float(), atol=0.05)
