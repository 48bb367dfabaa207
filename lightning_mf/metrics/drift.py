"""Identity drift (METHOD §6): how far a clip's face and background colours wander from its first frame.

The first frame fixes two regions: background (pixels within ``tolerance`` of the border's median colour) and face
(pixels within ``tolerance`` of the face colour, see :func:`lightning_mf.metrics.oracle.palette`), each shrunk by
one pixel so that the slowly bobbing outline does not count. Per frame, the per-channel *median* colour of each
region is compared with the first frame's (L1 over RGB, in 0..255 levels, averaged over the two regions). Medians
ignore what covers a minority of a region: the blinking eyes, the moving mouth (at most ~6% of the face) and the
few pixels that the bob moves across an outline; so a faithful clip scores ~0 and a recoloured one scores the
size of the colour change. Frames are grouped in the paper's windows 0-5 s / 5-15 s / 15-25 s, scaled to the
clip length (fractions [0, 0.2), [0.2, 0.6), [0.6, 1]) or, with ``window_seconds``, in absolute seconds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_mf.metrics.intervals import mean_ci95
from lightning_mf.metrics.oracle import palette

__all__ = ["IdentityDrift", "colour_drift"]


def _regions(first: Tensor, background: Tensor, face: Tensor, tolerance: float) -> Tensor:
    """Masks (B, 2, H, W) of background and face in first frames (B, 3, H, W), minus their outline pixels."""
    frames = first.float()
    masks = torch.stack([(frames - c[:, :, None, None]).abs().sum(1) < tolerance for c in (background, face)], dim=1)
    eroded = -F.max_pool2d(-masks.float(), 3, stride=1, padding=1)  # drop pixels next to another region
    return eroded > 0.5


def colour_drift(video: Tensor, tolerance: float = 40.0, reference: Tensor | None = None) -> Tensor:
    """Per-frame drift (B, T) of clips (B, T, 3, H, W) uint8 from a reference frame (B, 3, H, W), in 0..255 colour
    levels. The reference defaults to each clip's first frame; for generated clips pass the conditioning frame, or
    a clip that is noise from its first frame on would score no drift."""
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(
            f"colour_drift: video must be (B, T, 3, H, W) frames, got shape {tuple(video.shape)}; add the batch dim with video[None]"
        )
    if reference is not None and (reference.shape[0] != video.shape[0] or reference.shape[1:] != video.shape[2:]):
        raise ValueError(f"colour_drift: reference must be (B, 3, H, W) = {(video.shape[0], *video.shape[2:])}, got {tuple(reference.shape)}")
    first = video[:, 0] if reference is None else reference.to(video.device)
    background, face = palette(first[:, None])  # (B, 3) each
    masks = _regions(first, background.to(video.device), face.to(video.device), tolerance)  # (B, 2, H, W)
    frames = torch.cat([first[:, None], video], dim=1).float()  # reference first, then the clip
    drift = torch.zeros(video.shape[:2], device=video.device)  # (B, T)
    for b in range(video.shape[0]):
        for region in range(2):
            pixels = frames[b][:, :, masks[b, region]]  # (1 + T, 3, P)
            if pixels.shape[-1] == 0:
                continue
            colour = pixels.median(dim=-1).values  # (1 + T, 3)
            drift[b] += (colour[1:] - colour[:1]).abs().sum(-1) / 2
    return drift


class IdentityDrift(Metric):
    """Mean colour drift from the first frame per time window, accumulated over clips (exact across DDP), and the 95%
    interval over clips of each clip's mean drift (``drift_mean_ci95``).

    Args:
        fps: frames per second of the clips (used with ``window_seconds``).
        windows: upper ends of the windows as fractions of the clip (the paper's 5/15/25 s of a 25 s clip).
        window_seconds: upper ends in seconds instead (e.g. (5, 15, 25)); frames after the last are ignored.
        tolerance: L1 colour distance (0..255 levels) within which a first-frame pixel belongs to a region.
    """

    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        fps: float = 16.0,
        windows: tuple[float, ...] = (0.2, 0.6, 1.0),
        window_seconds: tuple[float, ...] | None = None,
        tolerance: float = 40.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # torchmetrics options, e.g. sync_on_compute=False for rank-local use
        edges = tuple(window_seconds) if window_seconds is not None else tuple(windows)
        if fps <= 0 or not edges or any(b <= a for a, b in zip((0.0, *edges), edges)):
            raise ValueError(
                f"IdentityDrift needs fps > 0 and increasing positive window ends, got fps={fps}, windows={edges}; "
                "e.g. windows=(0.2, 0.6, 1.0) or window_seconds=(5, 15, 25)"
            )
        if window_seconds is None and edges[-1] != 1.0:
            raise ValueError(f"IdentityDrift: windows are fractions of the clip and must end at 1.0, got {edges}")
        self.fps, self.edges, self.in_seconds, self.tolerance = fps, edges, window_seconds is not None, tolerance
        self.add_state("drift_sum", torch.zeros(len(edges), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", torch.zeros(len(edges), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("per_clip", default=[], dist_reduce_fx="cat")  # mean drift of each clip: the 95% interval
        self.add_state("per_clip_window", default=[], dist_reduce_fx="cat")  # (B, windows), NaN: no frame inside

    @torch.no_grad()
    def update(self, video: Tensor, reference: Tensor | None = None) -> None:
        """Clips (B, T, 3, H, W) uint8, compared with ``reference`` frames (B, 3, H, W), by default their own first
        frames (pass the conditioning frames for generated clips)."""
        drift = colour_drift(video, self.tolerance, reference)  # (B, T)
        self.per_clip.append(drift.double().mean(1))
        frames = drift.shape[1]
        start = torch.arange(frames, device=drift.device, dtype=torch.float64)
        position = start / self.fps if self.in_seconds else start / frames  # (T,) start time of each frame
        lower = 0.0
        windows = torch.full((drift.shape[0], len(self.edges)), float("nan"), dtype=torch.float64, device=drift.device)
        for i, upper in enumerate(self.edges):
            last = i == len(self.edges) - 1 and not self.in_seconds
            inside = (position >= lower) & ((position <= upper) if last else (position < upper))
            self.drift_sum[i] += drift[:, inside].double().sum()
            self.frames[i] += drift.shape[0] * int(inside.sum())
            if bool(inside.any()):
                windows[:, i] = drift[:, inside].double().mean(1)
            lower = upper
        self.per_clip_window.append(windows)

    def compute(self) -> dict[str, Tensor]:
        if float(self.frames.sum()) == 0:
            raise ValueError("IdentityDrift.compute called before any update (or no frame fell in a window)")
        per_window = self.drift_sum / self.frames.clamp(min=1)
        out = {f"drift_w{i}": per_window[i].float() for i in range(len(self.edges))}
        windows = dim_zero_cat(self.per_clip_window)  # (N, windows)
        for i in range(len(self.edges)):
            seen = windows[:, i][~windows[:, i].isnan()]
            if len(seen):
                out[f"drift_w{i}_ci95"] = mean_ci95(seen)[1].float()
        out["drift_mean"] = (self.drift_sum.sum() / self.frames.sum()).float()
        out["drift_mean_ci95"] = mean_ci95(dim_zero_cat(self.per_clip))[1].float()
        return out
