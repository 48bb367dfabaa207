"""Does each modality follow the transcript's timing? (synthetic data, where the ground truth is stored with a clip)

Lip sync needs both towers to start and stop with the transcript. Audio-video sync alone (``oracle.py``, LipSync)
cannot say which one fails when it is ~0, so this module scores each against the ground truth of the transcript the
clip was generated from, ``meta["ground_truth"]["mouth_open"]`` (per frame: the RMS of the speech envelope, which the
real mouth opening and the real audio energy both follow):

- video: the mouth opening measured from the frames (``oracle.mouth_opening``);
- audio: the audio's RMS energy per video frame (``oracle.audio_energy``).

Per clip, the Pearson r of each with the truth over lags ``-L..L``; a constant series (a frozen mouth, a silent track)
follows nothing and scores 0, and a modality with no positive mean r at any lag has no ``_timing_lag``. Lag ``L`` pairs truth frame ``t`` with generated frame ``t + L``, so **a positive lag is
a modality that runs late** (audio delayed by 3 frames reports +3). Results are means over clips with a 95% interval
(1.96 standard errors, ``_ci95``); states are the per-clip values, gathered across processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_mf.metrics.intervals import mean_ci95
from lightning_mf.metrics.oracle import audio_energy, lag_correlations, mouth_opening

__all__ = ["TranscriptTiming"]


class TranscriptTiming(Metric):
    """Per-modality r with the ground-truth timing at lag 0 (``<m>_timing_r``), its interval, and the lag of the best
    mean r (``<m>_timing_lag``), for ``m`` in the modalities given to ``update``.

    Args:
        samples_per_frame: audio samples per video frame (``AVSpec.samples_per_frame``).
        max_lag: largest lag searched, in frames.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, samples_per_frame: int, max_lag: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # torchmetrics options, e.g. sync_on_compute=False for rank-local use
        if samples_per_frame <= 0 or max_lag < 0:
            raise ValueError(f"TranscriptTiming needs samples_per_frame > 0 and max_lag >= 0, got {samples_per_frame} and {max_lag}")
        self.samples_per_frame, self.max_lag = samples_per_frame, max_lag
        self.add_state("video", default=[], dist_reduce_fx="cat")  # per clip: r at each lag (B, 2L+1)
        self.add_state("audio", default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, truth: Tensor, video: Tensor | None = None, audio: Tensor | None = None, mouth_colour: Tensor | None = None) -> None:
        """``truth`` (B, T): ground-truth opening per frame; ``video`` (B, T, 3, H, W) uint8 and/or ``audio``
        (B, T * samples_per_frame) of the same clips; ``mouth_colour`` (B, 3) as in ``oracle.mouth_opening``."""
        if truth.ndim != 2:
            raise ValueError(f"truth must be (B, T) openings per frame, got shape {tuple(truth.shape)}")
        if video is not None:
            self.video.append(self._lags(truth, mouth_opening(video, mouth_colour), "video"))
        if audio is not None:
            self.audio.append(self._lags(truth, audio_energy(audio, self.samples_per_frame), "audio"))

    def _lags(self, truth: Tensor, series: Tensor, name: str) -> Tensor:
        if series.shape != truth.shape:
            raise ValueError(
                f"{name} gives {tuple(series.shape)} frames per clip but truth is {tuple(truth.shape)}; pass the ground "
                "truth of the frames generated (slice it from the window's start frame)"
            )
        corrs, _ = lag_correlations(truth.to(series), series, self.max_lag)  # (B, 2L+1), 0 where undefined
        return corrs

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, state in (("video", self.video), ("audio", self.audio)):
            if isinstance(state, list) and not state:
                continue
            corrs = dim_zero_cat(state)  # (N, 2L+1)
            out[f"{name}_timing_r"], out[f"{name}_timing_r_ci95"] = (v.float() for v in mean_ci95(corrs[:, self.max_lag]))
            mean_r = corrs.mean(0)  # (2L+1,)
            if mean_r.max() > 0:  # else the modality follows the transcript at no lag, and a lag would mean nothing
                out[f"{name}_timing_lag"] = torch.argmax(mean_r) - self.max_lag
        if not out:
            raise ValueError("TranscriptTiming.compute called before any update with video or audio")
        return out
