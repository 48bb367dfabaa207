"""Rotary position embeddings on a shared (time in seconds, row, column) coordinate system.

Every token of every modality carries ``(t, row, col)``: its time is the centre of the span it covers (video
patches their tubelet's, mel frames their hop's, transcript tokens their word's; see ``sequence.py``), video
patches add their grid cell, other tokens row = col = 0. Because RoPE makes attention depend
on coordinate differences only, audio and video tokens of the same instant line up across modalities
(METHOD §2, "timestamp-based RoPE"). The head dimension is split between the axes (half to time by default).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Rope"]


class Rope(nn.Module):
    """Multi-axis RoPE. Time frequencies are geometric between ``time_min_hz`` and ``time_max_hz`` (cycles per
    second), grid frequencies the usual ``theta`` ladder over integer patch indices.

    Args:
        head_dim: attention head size; split into ``time_dims`` for time and the rest equally to row and column.
        time_dims: dimensions given to the time axis (even; default half of ``head_dim``).
        time_min_hz, time_max_hz: slowest and fastest time frequency; the fastest should resolve the finest token
            spacing (a mel frame), the slowest the longest context (a period of 1 / time_min_hz seconds).
        theta: base of the row/column frequency ladder.
    """

    def __init__(
        self, head_dim: int, time_dims: int | None = None, time_min_hz: float = 0.05, time_max_hz: float = 40.0, theta: float = 100.0
    ) -> None:
        super().__init__()
        time_dims = head_dim // 2 if time_dims is None else time_dims
        grid_dims = (head_dim - time_dims) // 2
        if time_dims % 2 or grid_dims % 2 or time_dims + 2 * grid_dims != head_dim:
            raise ValueError(f"Rope: head_dim={head_dim} with time_dims={time_dims} leaves no even split for row/column; use a head_dim divisible by 8")
        time_freqs = 2 * math.pi * torch.logspace(math.log10(time_min_hz), math.log10(time_max_hz), time_dims // 2)
        grid_freqs = theta ** (-torch.arange(grid_dims // 2, dtype=torch.float64) / max(1, grid_dims // 2))
        self.register_buffer("time_freqs", time_freqs.float(), persistent=False)
        self.register_buffer("grid_freqs", grid_freqs.float(), persistent=False)

    def angles(self, pos: Tensor) -> Tensor:
        """Rotation angles (N, head_dim / 2) for positions (N, 3)."""
        pos = pos.float()
        return torch.cat(
            [pos[:, :1] * self.time_freqs, pos[:, 1:2] * self.grid_freqs, pos[:, 2:3] * self.grid_freqs], dim=-1
        )

    def rotation(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin (N, Dh/2), or (B, 1, N, Dh/2) for per-batch positions (B, N, 3), of positions (N, 3): computed
        once per forward and applied by every layer (:meth:`apply`)."""
        angles = self.angles(pos.reshape(-1, 3)).reshape(*pos.shape[:-1], -1)  # (N, Dh/2) or (B, N, Dh/2)
        if angles.ndim == 3:
            angles = angles[:, None]  # (B, 1, N, Dh/2): broadcast over heads
        return angles.cos(), angles.sin()

    @staticmethod
    def apply(x: Tensor, rotation: tuple[Tensor, Tensor]) -> Tensor:
        """Rotate q or k (B, H, N, Dh) by a :meth:`rotation`; pairs are (even, odd) dims."""
        cos, sin = (t.to(x.dtype) for t in rotation)
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, N, Dh/2)
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)

    def rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        """Rotate q or k (B, H, N, Dh) by the angles of positions (N, 3), or per batch element (B, N, 3)."""
        return self.apply(x, self.rotation(pos))
