"""Grain and mouth motion on synthetic characters: what the Fréchet distances of clips cannot tell apart.

The random-feature Fréchet distances of clips (``fd_clips``, ``fd_motion``) read independent pixel noise as motion:
on the reference data the first frame copied scores FD clips 32, and 10.6 once Gaussian noise of std 6 is added to
every pixel (docs/benchmarks.md, "FD clips rewards grain"). So a grainy generator looks as if it moved. Two measures
answer the two questions separately:

- :class:`BackgroundFlicker`: how much the still background changes from frame to frame (grain, patch grids,
  flashing). The synthetic background is one flat colour that never moves, so real clips score 0 and i.i.d. noise of
  std ``s`` scores about ``1.13 s`` (the mean of |N(0, 2 s^2)|, before rounding and clipping).
- :class:`MouthMotion`: how far the mouth moves: the standard deviation over time of its measured opening (pixels,
  :func:`~lightning_mf.metrics.oracle.mouth_opening`). Real clips score about 1.5 on the tiny preset; the first frame
  copied scores 0; a generator whose mouth barely moves scores little whatever its grain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_mf.metrics.drift import _regions
from lightning_mf.metrics.intervals import mean_ci95
from lightning_mf.metrics.oracle import _check_video, mouth_opening, palette

__all__ = ["BackgroundFlicker", "MouthMotion", "background_flicker"]


def background_flicker(video: Tensor, reference: Tensor | None = None, tolerance: float = 40.0) -> Tensor:
    """Per-clip mean |frame_t - frame_{t-1}| (B,) over the background, in 0..255 levels (mean over RGB).

    The background is the region :class:`~lightning_mf.metrics.drift.IdentityDrift` watches: pixels of ``reference``
    (B, 3, H, W), by default each clip's first frame, within ``tolerance`` (L1) of its border colour, less the pixels
    next to another region (the bobbing face moves its outline by under a pixel on the tiny preset). A clip with no
    such pixel scores NaN."""
    _check_video(video)
    if video.shape[1] < 2:
        raise ValueError(f"background_flicker needs clips of at least 2 frames, got {video.shape[1]}")
    first = video[:, 0] if reference is None else reference.to(video.device)
    background, face = palette(first[:, None])  # (B, 3) each
    mask = _regions(first, background.to(video.device), face.to(video.device), tolerance)[:, 0]  # (B, H, W)
    change = video.float().diff(dim=1).abs().mean(2)  # (B, T - 1, H, W)
    pixels = mask.sum((1, 2)) * change.shape[1]  # (B,)
    total = (change * mask[:, None]).sum((1, 2, 3))
    return torch.where(pixels > 0, total / pixels.clamp_min(1), torch.full_like(total, float("nan")))


class BackgroundFlicker(Metric):
    """Mean frame-to-frame change of the still background over clips (``flicker``) and its 95% interval over clips
    (``flicker_ci95``); see :func:`background_flicker`. Real synthetic clips score 0."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, tolerance: float = 40.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # torchmetrics options, e.g. sync_on_compute=False for rank-local use
        if tolerance <= 0:
            raise ValueError(f"BackgroundFlicker: tolerance must be > 0 colour levels, got {tolerance}")
        self.tolerance = tolerance
        self.add_state("per_clip", default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, video: Tensor, reference: Tensor | None = None) -> None:
        """Clips (B, T, 3, H, W) uint8; ``reference`` (B, 3, H, W): the frames whose background is watched (pass the
        conditioning frames for generated clips), by default their own first frames."""
        flicker = background_flicker(video, reference, self.tolerance).double()
        self.per_clip.append(flicker[~flicker.isnan()])

    def compute(self) -> dict[str, Tensor]:
        values = torch.zeros(0) if isinstance(self.per_clip, list) and not self.per_clip else dim_zero_cat(self.per_clip)
        if values.numel() == 0:
            raise ValueError("BackgroundFlicker.compute called before any update with a visible background")
        mean, half = mean_ci95(values)
        return {"flicker": mean.float(), "flicker_ci95": half.float()}


class MouthMotion(Metric):
    """How far the mouth moves: per clip, the standard deviation over time of the measured opening in pixels;
    the mean over clips (``mouth_motion``) and its 95% interval (``mouth_motion_ci95``).

    Timing correlations cannot see this: a mouth that opens a tenth as far, on time, correlates as well as a real one.
    """

    higher_is_better = None  # the real clips' value is the target
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("per_clip", default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, video: Tensor, mouth_colour: Tensor | None = None) -> None:
        """Clips (B, T, 3, H, W) uint8 with T >= 2; optional mouth colours (B, 3) in 0..255 (ground truth)."""
        _check_video(video)
        if video.shape[1] < 2:
            raise ValueError(f"MouthMotion needs clips of at least 2 frames, got {video.shape[1]}")
        self.per_clip.append(mouth_opening(video, mouth_colour).double().std(dim=1))  # (B,)

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.per_clip, list) and not self.per_clip:  # after a DDP sync it is one tensor
            raise ValueError("MouthMotion.compute called before any update")
        mean, half = mean_ci95(dim_zero_cat(self.per_clip))
        return {"mouth_motion": mean.float(), "mouth_motion_ci95": half.float()}
