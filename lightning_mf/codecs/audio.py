"""Default audio codec: normalised log-mel frames as tokens, Griffin-Lim back to a waveform (METHOD.md §2).

A parameter-free stand-in for an audio VAE. Time alignment: mel frame ``i`` is centred at sample
``i * mel_hop``, so video frame ``t`` owns mel frames ``t * mels_per_frame .. (t + 1) * mels_per_frame - 1``
and its first mel frame is centred on the frame's start time ``t / fps``.
"""

from __future__ import annotations

import math
import warnings

import torch
import torchaudio.functional as AF
from torch import Tensor, nn
from torchaudio.transforms import GriffinLim, InverseMelScale, MelSpectrogram

from lightning_mf.spec import AVSpec

__all__ = ["MelCodec"]

# Fixed normalisation (no data statistics, so a token means the same loudness in every run and dataset).
# Mel power is first divided by the power a full-scale sine (amplitude 1) puts in its FFT bin,
# (sum(window) / 2) ** 2, so it reads as power relative to full scale and does not depend on n_fft. Then
#     token = (ln(power + MEL_FLOOR) - LOG_CENTER) / LOG_SCALE,
# i.e. one token unit is one decade of power (10 dB) and 0 is -40 dB. MEL_FLOOR = 1e-6 (-60 dB) keeps a 60 dB
# dynamic range: quieter detail is masked by speech-level sound and Griffin-Lim cannot rebuild it anyway.
# Silence maps to exactly FLOOR_TOKEN = -2, a full-scale sine bin to about +4. Speech-like audio peaking
# near 0.5 spans about [-2, 2.7] with mean near -1 and std near 1 (the harmonic test signal of the tests,
# 1-2 s: mean -1.0 to -1.1, std 1.1, max 2.3 to 2.7): the unit-ish scale the diffusion noise schedule expects.
MEL_FLOOR = 1e-6
LOG_CENTER = math.log(1e-4)
LOG_SCALE = math.log(10.0)
FLOOR_TOKEN = (math.log(MEL_FLOOR) - LOG_CENTER) / LOG_SCALE  # -2 (up to rounding): the token of silence


class MelCodec(nn.Module):
    """Waveform (B, S) <-> normalised log-mel tokens (B, S // mel_hop, n_mels).

    ``encode`` uses torchaudio's ``MelSpectrogram`` (power 2, Hann window, HTK mel scale, centred frames with
    zero padding, i.e. silence is assumed outside the clip). ``decode`` inverts the mel scale with
    ``InverseMelScale`` (least squares) and recovers phase with ``GriffinLim`` started from zero phase
    (``rand_init=False``), so decoding is deterministic. The decoded waveform matches the mel magnitudes,
    not the original phase.

    All computation runs in float32 (float64 if the input or the codec is float64) with autocast off, so a
    module cast to half precision still decodes; tokens come back in the input's float dtype.
    """

    def __init__(self, spec: AVSpec, n_mels: int = 32, n_fft: int = 1024, griffin_lim_iters: int = 32) -> None:
        """Build the mel analysis and its Griffin-Lim inverse for the rates of ``spec``.

        Args:
            spec: shared rates; ``spec.mel_hop`` is the hop in samples, ``spec.mels_per_frame`` mel frames
                per video frame.
            n_mels: mel bands, the token size; every band must cover at least one FFT bin of ``n_fft``.
            n_fft: FFT and window size in samples, even; must exceed ``spec.mel_hop`` so consecutive windows
                overlap (2-4x the hop is typical); larger gives finer frequency resolution and coarser timing.
            griffin_lim_iters: Griffin-Lim iterations when decoding; more is slower and slightly cleaner.
        """
        super().__init__()
        for name, value in (("n_mels", n_mels), ("n_fft", n_fft), ("griffin_lim_iters", griffin_lim_iters)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MelCodec: {name} must be a positive integer, got {value!r}")
        if n_fft % 2:
            raise ValueError(
                f"MelCodec: n_fft={n_fft} must be even so a centred STFT of S samples has exactly "
                f"1 + S // mel_hop frames; use {n_fft + 1}"
            )
        if n_fft <= spec.mel_hop:
            raise ValueError(
                f"MelCodec: n_fft={n_fft} must exceed spec.mel_hop={spec.mel_hop} so consecutive windows overlap "
                "(the inverse STFT of Griffin-Lim needs every sample under a nonzero window); use n_fft of 2-4x "
                f"mel_hop, e.g. {1 << (2 * spec.mel_hop - 1).bit_length()}"
            )
        empty = _empty_mel_bands(n_fft, n_mels, spec.sample_rate)
        if empty:
            fits = [m for m in range(1, n_mels) if not _empty_mel_bands(n_fft, m, spec.sample_rate)]
            most = max(fits, default=0)
            raise ValueError(
                f"MelCodec: n_mels={n_mels} is too large for n_fft={n_fft} at {spec.sample_rate} Hz: {empty} mel "
                f"bands get no FFT bin; use n_mels <= {most} or a larger n_fft"
            )
        self.spec = spec
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.griffin_lim_iters = griffin_lim_iters
        self.melspec = MelSpectrogram(
            sample_rate=spec.sample_rate,
            n_fft=n_fft,
            hop_length=spec.mel_hop,
            n_mels=n_mels,
            power=2.0,
            center=True,
            pad_mode="constant",
            mel_scale="htk",
        )
        self.inverse_mel = InverseMelScale(
            n_stft=n_fft // 2 + 1, n_mels=n_mels, sample_rate=spec.sample_rate, mel_scale="htk", driver="gels"
        )
        self.griffin_lim = GriffinLim(
            n_fft=n_fft, n_iter=griffin_lim_iters, hop_length=spec.mel_hop, power=2.0, rand_init=False
        )
        # Power of a full-scale sine in its FFT bin, so normalised mel power does not depend on n_fft.
        self.full_scale_power = float(self.melspec.spectrogram.window.sum() / 2) ** 2

    @property
    def token_dim(self) -> int:
        """Features per token: ``n_mels``."""
        return self.n_mels

    @property
    def tokens_per_frame(self) -> int:
        """Mel frames (tokens) per video frame: ``spec.mels_per_frame``."""
        return self.spec.mels_per_frame

    @property
    def tokens_per_chunk(self) -> int:
        """Tokens of one chunk: ``spec.mels_per_chunk``."""
        return self.spec.mels_per_chunk

    def encode(self, audio: Tensor) -> Tensor:
        """Audio (B, S) float in [-1, 1], S a whole number of video frames -> tokens (B, S // mel_hop, n_mels).

        Mel frame ``i`` is centred at sample ``i * mel_hop``; torchaudio's extra last frame (centred at sample
        S) belongs to the next video frame and is dropped. Silence encodes to ``FLOOR_TOKEN`` (-2); one token
        unit is 10 dB.
        """
        spf = self.spec.samples_per_frame
        if audio.ndim != 2 or audio.shape[1] == 0 or audio.shape[1] % spf:
            raise ValueError(
                f"MelCodec.encode: audio must be (B, S) with S a positive multiple of samples_per_frame={spf} "
                f"(sample_rate / fps), got {tuple(audio.shape)}; trim or pad the audio to whole video frames"
            )
        if not audio.is_floating_point():
            raise ValueError(f"MelCodec.encode: audio must be float in [-1, 1], got dtype {audio.dtype}")
        dtype = self._compute_dtype(audio)
        spec, mel = self.melspec.spectrogram, self.melspec.mel_scale
        # Same as self.melspec(x), with its buffers cast to the compute dtype so a half-precision module works.
        with torch.autocast(audio.device.type, enabled=False):
            x = audio.to(dtype)
            power = AF.spectrogram(
                x, spec.pad, spec.window.to(dtype), spec.n_fft, spec.hop_length, spec.win_length, spec.power,
                spec.normalized, spec.center, spec.pad_mode, spec.onesided,
            )  # (B, F, S // hop + 1)
            power = power[..., : audio.shape[1] // self.spec.mel_hop]  # (B, F, M)
            mel_power = torch.matmul(power.transpose(1, 2), mel.fb.to(dtype))  # (B, M, n_mels)
            tokens = (torch.log(mel_power / self.full_scale_power + MEL_FLOOR) - LOG_CENTER) / LOG_SCALE
        return tokens.to(audio.dtype)

    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens (B, M, n_mels) -> waveform (B, M * mel_hop), deterministic for a given input.

        M * mel_hop must exceed n_fft // 2 (with the defaults: M >= 3, i.e. one video frame is enough).
        """
        if tokens.ndim != 3 or tokens.shape[2] != self.n_mels or tokens.shape[1] == 0:
            raise ValueError(f"MelCodec.decode: tokens must be (B, M, {self.n_mels}), got {tuple(tokens.shape)}")
        if tokens.shape[1] * self.spec.mel_hop <= self.n_fft // 2:
            need = self.n_fft // 2 // self.spec.mel_hop + 1
            raise ValueError(
                f"MelCodec.decode: M={tokens.shape[1]} mel frames give {tokens.shape[1] * self.spec.mel_hop} "
                f"samples, too few for Griffin-Lim's reflect-padded STFT with n_fft={self.n_fft}; decode at least "
                f"{need} mel frames at once or use a smaller n_fft"
            )
        dtype = self._compute_dtype(tokens)
        gl = self.griffin_lim
        with torch.autocast(tokens.device.type, enabled=False):
            x = tokens.to(dtype)
            mel_power = (torch.exp(x * LOG_SCALE + LOG_CENTER) - MEL_FLOOR).clamp_min(0) * self.full_scale_power
            fb_t = self.inverse_mel.fb.to(dtype).transpose(0, 1)[None]  # (1, n_mels, F)
            # InverseMelScale's least squares, with our buffers cast to the compute dtype.
            lin_power = torch.linalg.lstsq(fb_t, mel_power.transpose(1, 2), driver=self.inverse_mel.driver)
            lin_power = torch.relu(lin_power.solution)  # (B, F, M)
            # A centred STFT of M * hop samples has M + 1 frames; the last one (centred at sample M * hop) was
            # dropped by encode, so repeat frame M - 1 in its place to keep the tail from fading out.
            lin_power = torch.cat([lin_power, lin_power[..., -1:]], dim=-1)  # (B, F, M + 1)
            wave = AF.griffinlim(
                lin_power, gl.window.to(dtype), gl.n_fft, gl.hop_length, gl.win_length, gl.power, gl.n_iter,
                gl.momentum, tokens.shape[1] * self.spec.mel_hop, gl.rand_init,
            )  # (B, M * hop)
        return wave.to(tokens.dtype)

    def positions(self, num_frames: int, device: torch.device | str | None = None) -> Tensor:
        """Rotary positions (N, 1) float32: time in seconds of the centre of the hop each mel frame stands for,
        ``(i + 0.5) * mel_hop / sr`` (frame ``i`` covers samples ``[i, i + 1) * mel_hop``; see ``sequence.py``)."""
        if num_frames <= 0:
            raise ValueError(f"MelCodec.positions: num_frames must be positive, got {num_frames}")
        if device is None:
            device = self.griffin_lim.window.device
        n = num_frames * self.tokens_per_frame
        time = (torch.arange(n, device=device, dtype=torch.float64) + 0.5) * self.spec.mel_hop / self.spec.sample_rate
        return time.to(torch.float32).unsqueeze(1)  # (N, 1)

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        """float64 if the input or the codec is float64, else float32 (STFT and lstsq need >= 32 bits)."""
        wide = x.dtype == torch.float64 or self.griffin_lim.window.dtype == torch.float64
        return torch.float64 if wide else torch.float32


def _empty_mel_bands(n_fft: int, n_mels: int, sample_rate: int) -> int:
    """Number of mel filters that cover no FFT bin (they make the mel inverse rank-deficient)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchaudio warns about exactly what we count here
        fb = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, None, "htk")
    return int((fb.max(dim=0).values == 0).sum())
