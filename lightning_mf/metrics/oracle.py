"""Oracle lip sync on synthetic characters (METHOD §6, DATA.md): no learned network, so nothing to fool.

The mouth opening is *measured from the frames* (the character's flat colours make it readable) and correlated
with the per-frame RMS energy of the audio over time offsets; the generator's own video and audio correlate at
r > 0.9 at offset 0, so a generated clip that scores lower has lost lip sync.

How the mouth is measured, per clip:
1. background colour = per-channel median of the border pixels of the first frame; face colour = per-channel
   median of the first frame's pixels far from the background (the face covers most of them; eyes/mouth are few);
2. the face ellipse (centre, radii) from the moments of the first frame's soft face coverage; the mouth search
   region is the lower face (below the centre, within 0.85 of the radii): it holds only face and mouth pixels;
3. mouth colour = given (ground truth), else the mean of the search-region pixels (over all frames) whose L1
   distance to the face colour is at least 90% of the largest such distance, i.e. the fully covered mouth pixels;
4. each pixel's mouth coverage = its projection on the face->mouth colour segment (the renderer paints the mouth
   over the face with anti-aliased coverage), kept only where the pixel lies on that segment;
5. opening = the largest per-column sum of coverage (the mouth's height in pixels): the height follows the
   opening while the width depends on the vowel, so the area would not.

Sign of offsets (as in :mod:`lightning_mf.metrics.lipsync`): lag ``L`` pairs video frame t with audio frame
t + L, so **a positive lag is audio that lags the video** (audio delayed by 3 frames reports +3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_mf.metrics.intervals import mean_ci95

__all__ = ["OracleSync", "audio_energy", "best_lag", "lag_correlations", "mouth_opening", "palette"]

FAR_FROM_BACKGROUND = 60.0  # L1 over RGB (0..255); identity colours are >= 120 apart (synthetic.py)
ON_SEGMENT = 40.0  # L1 tolerance off the face->mouth colour segment (a blend with eye/background is >= 120 away)
REGION_RADIUS = 0.85  # mouth search region, as a fraction of the face radii (the mouth reaches ~0.71)


def _check_video(video: Tensor, name: str = "video") -> None:
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"{name} must be (B, T, 3, H, W) frames, got shape {tuple(video.shape)}; add the batch dim with video[None]")


def palette(video: Tensor) -> tuple[Tensor, Tensor]:
    """Background and face colours (B, 3) each, float 0..255, read from the first frame of each clip."""
    _check_video(video)
    first = video[:, 0].float().flatten(2).transpose(1, 2)  # (B, H*W, 3)
    frame = video[:, 0].float()  # (B, 3, H, W)
    border = torch.cat([frame[..., 0, :], frame[..., -1, :], frame[..., :, 0], frame[..., :, -1]], dim=-1)  # (B, 3, N)
    background = border.median(dim=-1).values  # (B, 3)
    faces = []
    for pixels, bg in zip(first, background):
        far = pixels[(pixels - bg).abs().sum(-1) > FAR_FROM_BACKGROUND]  # (n, 3)
        faces.append(far.median(dim=0).values if len(far) else bg)
    return background, torch.stack(faces)


def _mouth_region(frame: Tensor, background: Tensor, face: Tensor) -> Tensor:
    """Boolean (H, W) lower-face region of one first frame (3, H, W): only face and mouth pixels live there."""
    height, width = frame.shape[-2:]
    span = (face - background).abs().sum().clamp_min(1.0)
    cover = ((frame - background[:, None, None]).abs().sum(0) / span).clamp(0, 1)  # (H, W) soft face coverage
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    mass = cover.sum().clamp_min(1e-6)
    cy, cx = (cover * ys).sum() / mass, (cover * xs).sum() / mass
    ry = 2 * ((cover * (ys - cy) ** 2).sum() / mass).sqrt()  # a filled ellipse has variance r^2 / 4
    rx = 2 * ((cover * (xs - cx) ** 2).sum() / mass).sqrt()
    radius = ((ys - cy) / ry.clamp_min(1e-6)) ** 2 + ((xs - cx) / rx.clamp_min(1e-6)) ** 2  # (H, W)
    return (radius < REGION_RADIUS**2) & (ys > cy)


def mouth_opening(video: Tensor, mouth_colour: Tensor | None = None) -> Tensor:
    """Mouth height in pixels per frame (B, T), measured from frames (B, T, 3, H, W) uint8 (see module doc).

    ``mouth_colour`` (B, 3) in 0..255 (``ground_truth["identity"]["mouth"]``) skips estimating it from the clip.
    """
    _check_video(video)
    if mouth_colour is not None and (mouth_colour.ndim != 2 or mouth_colour.shape != (video.shape[0], 3)):
        raise ValueError(
            f"mouth_colour must be (B, 3) = ({video.shape[0]}, 3) RGB in 0..255, got shape {tuple(mouth_colour.shape)}"
        )
    background, face = palette(video)  # (B, 3) each
    out = torch.zeros(video.shape[:2])  # (B, T)
    for b in range(video.shape[0]):
        frames = video[b].float()  # (T, 3, H, W)
        region = _mouth_region(frames[0], background[b], face[b])  # (H, W)
        pixels = frames.permute(0, 2, 3, 1)[:, region]  # (T, n, 3)
        if pixels.numel() == 0:
            continue
        if mouth_colour is not None:
            mouth = mouth_colour[b].float().cpu()
        else:
            distance = (pixels - face[b]).abs().sum(-1)  # (T, n)
            if distance.max() < FAR_FROM_BACKGROUND:  # the mouth never opens: nothing to measure
                continue
            mouth = pixels[distance >= 0.9 * distance.max()].mean(0)
        step = mouth - face[b]  # (3,)
        alpha = ((pixels - face[b]) @ step / step.dot(step).clamp_min(1.0)).clamp(0, 1)  # (T, n)
        off = (pixels - face[b] - alpha[..., None] * step).abs().sum(-1)  # (T, n) distance off the segment
        coverage = torch.zeros(frames.shape[0], *region.shape)  # (T, H, W)
        coverage[:, region] = torch.where(off < ON_SEGMENT, alpha, 0.0)
        out[b] = coverage.sum(1).amax(1)  # tallest column
    return out.to(video.device)


def audio_energy(audio: Tensor, samples_per_frame: int) -> Tensor:
    """Per-frame RMS (B, T) of audio (B, S), S = T * samples_per_frame."""
    if audio.ndim != 2:
        raise ValueError(f"audio must be (B, S) samples, got shape {tuple(audio.shape)}; add the batch dim with audio[None]")
    if samples_per_frame <= 0 or audio.shape[1] % samples_per_frame:
        raise ValueError(
            f"audio of {audio.shape[1]} samples is not a whole number of frames of samples_per_frame={samples_per_frame}; "
            "cut it to T * samples_per_frame samples or pass AVSpec.samples_per_frame"
        )
    return audio.float().reshape(audio.shape[0], -1, samples_per_frame).pow(2).mean(-1).sqrt()


def lag_correlations(video_series: Tensor, audio_series: Tensor, max_lag: int) -> tuple[Tensor, Tensor]:
    """Pearson correlation per clip and lag (B, 2L+1) of video[t] with audio[t + lag], over the frames where both
    exist, and whether it is defined (B, 2L+1) bool (a constant series, e.g. a silent clip, has none)."""
    if video_series.ndim != 2 or video_series.shape != audio_series.shape:
        raise ValueError(
            f"video_series and audio_series must both be (B, T), got {tuple(video_series.shape)} and {tuple(audio_series.shape)}"
        )
    frames = video_series.shape[1]
    if not 0 <= max_lag <= frames - 3:
        raise ValueError(f"max_lag={max_lag} needs clips of at least max_lag + 3 frames, got {frames}; use max_lag <= {frames - 3}")
    corrs, valid = [], []
    for lag in range(-max_lag, max_lag + 1):
        v = video_series[:, max(0, -lag) : frames - max(0, lag)].double()  # (B, T - |lag|)
        a = audio_series[:, max(0, lag) : frames + min(0, lag)].double()
        v, a = v - v.mean(1, keepdim=True), a - a.mean(1, keepdim=True)
        norm = (v.pow(2).sum(1) * a.pow(2).sum(1)).sqrt()  # (B,)
        ok = norm > 1e-12
        corrs.append(torch.where(ok, (v * a).sum(1) / norm.clamp_min(1e-12), 0.0))
        valid.append(ok)
    return torch.stack(corrs, 1), torch.stack(valid, 1)


def best_lag(video_series: Tensor, audio_series: Tensor, max_lag: int) -> tuple[Tensor, Tensor]:
    """The lag (int64 scalar) maximising the clip-averaged correlation of (B, T) series, and that correlation.

    Lag ``L`` pairs video[t] with audio[t + L]: positive = audio delayed relative to the video.
    """
    corrs, valid = lag_correlations(video_series, audio_series, max_lag)
    mean = corrs.sum(0) / valid.sum(0).clamp_min(1)  # (2L+1,)
    index = torch.argmax(mean)
    return index - max_lag, mean[index].float()


class OracleSync(Metric):
    """Correlation of measured mouth opening with audio RMS, at lag 0 and at the best lag, pooled over clips.

    States are per-lag sums of per-clip correlations and counts, so the result is exact across batches and DDP, and
    the per-clip correlations at lag 0, for the 95% interval of ``oracle_sync_corr`` (``oracle_sync_corr_ci95``).

    Args:
        samples_per_frame: audio samples per video frame (``AVSpec.samples_per_frame``).
        max_lag: largest offset searched, in frames.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, samples_per_frame: int, max_lag: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # torchmetrics options, e.g. sync_on_compute=False for rank-local use
        if samples_per_frame <= 0 or max_lag < 0:
            raise ValueError(
                f"OracleSync needs samples_per_frame > 0 and max_lag >= 0, got {samples_per_frame} and {max_lag}"
            )
        self.samples_per_frame, self.max_lag = samples_per_frame, max_lag
        self.add_state("corr_sum", torch.zeros(2 * max_lag + 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.zeros(2 * max_lag + 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("at_zero", default=[], dist_reduce_fx="cat")  # per clip with a defined r at lag 0

    @torch.no_grad()
    def update(self, video: Tensor, audio: Tensor, mouth_colour: Tensor | None = None) -> None:
        """Video (B, T, 3, H, W) uint8, audio (B, T * samples_per_frame), optional mouth colours (B, 3)."""
        _check_video(video)
        energy = audio_energy(audio, self.samples_per_frame)  # (B, T)
        if energy.shape != video.shape[:2]:
            raise ValueError(
                f"audio holds {energy.shape[1]} frames of {self.samples_per_frame} samples but video has {video.shape[1]} "
                f"frames (batch {energy.shape[0]} vs {video.shape[0]}); pass aligned windows of the same clips"
            )
        opening = mouth_opening(video, mouth_colour).to(energy.device)  # (B, T)
        corrs, valid = lag_correlations(opening, energy, self.max_lag)  # (B, 2L+1) each
        self.corr_sum += corrs.sum(0).to(self.corr_sum)
        self.clips += valid.sum(0).to(self.clips)
        self.at_zero.append(corrs[valid[:, self.max_lag], self.max_lag].double())

    def compute(self) -> dict[str, Tensor]:
        if float(self.clips.sum()) == 0:
            raise ValueError("OracleSync.compute called before any update with a moving mouth and non-silent audio")
        mean = self.corr_sum / self.clips.clamp_min(1)  # (2L+1,)
        index = torch.argmax(mean)
        return {
            "oracle_sync_corr": mean[self.max_lag].float(),
            "oracle_sync_corr_ci95": mean_ci95(dim_zero_cat(self.at_zero))[1].float(),
            "oracle_sync_lag": (index - self.max_lag).long(),
            "oracle_sync_best_corr": mean[index].float(),
        }
