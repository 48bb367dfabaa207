"""Default video codec: cut pixel frames into patch tokens and glue them back (METHOD.md §2).

It is a lossless, parameter-free stand-in for a video VAE: a user with a pretrained VAE plugs in another codec
with the same interface by import path (``model.codec.video``, see :mod:`lightning_mf.codecs.plugin`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_mf.spec import AVSpec

__all__ = ["PatchCodec", "to_uint8"]

_CHANNELS = 3


def to_uint8(video: Tensor) -> Tensor:
    """Float video in [-1, 1] -> uint8 (round to nearest, clamp), so uint8 round trips are bit-exact."""
    return ((video.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


class PatchCodec(nn.Module):
    """Patchify RGB frames into tokens and back; ``decode(encode(x))`` is exact.

    Token order (``positions`` and later rotary embeddings rely on it): raster order, time-major, then patch
    row, then patch column, i.e. token ``n = (s * rows + r) * cols + c`` for time step ``s`` (frames
    ``s * tubelet .. s * tubelet + tubelet - 1``), row ``r`` and column ``c``.

    Feature order inside a token: ``video[b, s*k:(s+1)*k, :, r*p:(r+1)*p, c*p:(c+1)*p].flatten()`` for
    ``k = tubelet`` and ``p = patch``, i.e. (frame in tubelet, channel, pixel row, pixel column).
    """

    def __init__(self, spec: AVSpec, patch: int = 4, tubelet: int = 1) -> None:
        """Build the codec for the frame size and chunk length of ``spec``.

        Args:
            spec: shared rates and sizes; the frame size must be divisible by ``patch`` and
                ``spec.frames_per_chunk`` by ``tubelet``.
            patch: side of a square patch in pixels; one token covers ``patch x patch`` pixels.
            tubelet: consecutive frames merged into one token (1 = one token per patch per frame).
        """
        super().__init__()
        for name, value in (("patch", patch), ("tubelet", tubelet)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PatchCodec: {name} must be a positive integer, got {value!r}")
        if spec.height % patch or spec.width % patch:
            common = math.gcd(spec.height, spec.width)
            near = sorted((d for d in range(1, common + 1) if common % d == 0), key=lambda d: abs(d - patch))[:3]
            raise ValueError(
                f"PatchCodec: patch={patch} must divide the frame size spec.height={spec.height} and "
                f"spec.width={spec.width}; use a common divisor such as {', '.join(map(str, sorted(near)))}"
            )
        if spec.frames_per_chunk % tubelet:
            raise ValueError(
                f"PatchCodec: tubelet={tubelet} does not divide spec.frames_per_chunk={spec.frames_per_chunk}, "
                "so a chunk would split a tubelet; use a divisor of frames_per_chunk"
            )
        self.spec = spec
        self.patch = patch
        self.tubelet = tubelet
        self.rows = spec.height // patch
        self.cols = spec.width // patch

    @property
    def token_dim(self) -> int:
        """Features per token: ``tubelet * patch * patch * 3``."""
        return self.tubelet * self.patch * self.patch * _CHANNELS

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per token time step (``rows * cols``); a step spans ``tubelet`` frames, one frame if 1."""
        return self.rows * self.cols

    @property
    def tokens_per_chunk(self) -> int:
        """Tokens of one chunk of ``spec.frames_per_chunk`` frames."""
        return self.spec.frames_per_chunk // self.tubelet * self.tokens_per_frame

    def num_tokens(self, num_frames: int) -> int:
        """Tokens of a clip of ``num_frames`` frames (a multiple of ``tubelet``)."""
        self._check_frames(num_frames)
        return num_frames // self.tubelet * self.tokens_per_frame

    def encode(self, video: Tensor) -> Tensor:
        """Video (B, T, 3, H, W), uint8 or float in [-1, 1] -> tokens (B, N, D) float in [-1, 1].

        uint8 maps to float32 by ``x / 127.5 - 1``; float input keeps its dtype and is not rescaled.
        """
        if video.ndim != 5 or video.shape[2:] != (_CHANNELS, self.spec.height, self.spec.width):
            raise ValueError(
                f"PatchCodec.encode: video must be (B, T, {_CHANNELS}, {self.spec.height}, {self.spec.width}) "
                f"(spec height x width), got {tuple(video.shape)}"
            )
        if video.dtype == torch.uint8:
            video = video.to(torch.float32) / 127.5 - 1.0
        elif not video.is_floating_point():
            raise ValueError(
                f"PatchCodec.encode: video must be uint8 or float in [-1, 1], got dtype {video.dtype}; convert it"
            )
        b, t = video.shape[:2]
        self._check_frames(t)
        k, p = self.tubelet, self.patch
        x = video.reshape(b, t // k, k, _CHANNELS, self.rows, p, self.cols, p)  # (B, S, k, C, R, p, Q, p)
        x = x.permute(0, 1, 4, 6, 2, 3, 5, 7)  # (B, S, R, Q, k, C, p, p)
        return x.reshape(b, t // k * self.tokens_per_frame, self.token_dim)  # (B, N, D)

    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens (B, N, D) -> float video (B, T, 3, H, W) in [-1, 1]; the exact inverse of ``encode``."""
        if tokens.ndim != 3 or tokens.shape[2] != self.token_dim or tokens.shape[1] % self.tokens_per_frame:
            raise ValueError(
                f"PatchCodec.decode: tokens must be (B, N, {self.token_dim}) with N a multiple of "
                f"tokens_per_frame={self.tokens_per_frame}, got {tuple(tokens.shape)}"
            )
        b, n = tokens.shape[:2]
        steps, k, p = n // self.tokens_per_frame, self.tubelet, self.patch
        x = tokens.reshape(b, steps, self.rows, self.cols, k, _CHANNELS, p, p)  # (B, S, R, Q, k, C, p, p)
        x = x.permute(0, 1, 4, 5, 2, 6, 3, 7)  # (B, S, k, C, R, p, Q, p)
        return x.reshape(b, steps * k, _CHANNELS, self.spec.height, self.spec.width)  # (B, T, C, H, W)

    def positions(self, num_frames: int, device: torch.device | str | None = None) -> Tensor:
        """Rotary positions (N, 3) float32 of a clip of ``num_frames`` frames, in token order.

        Columns: time in seconds of the centre of the span the token covers (frame ``t`` covers
        ``[t / fps, (t + 1) / fps)``, a tubelet its frames' union; see ``sequence.py``), patch row, patch column.
        """
        self._check_frames(num_frames)
        steps = num_frames // self.tubelet
        time = (torch.arange(steps, device=device, dtype=torch.float64) + 0.5) * self.tubelet / self.spec.fps
        row = torch.arange(self.rows, device=device, dtype=torch.float64)
        col = torch.arange(self.cols, device=device, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(time, row, col, indexing="ij"), dim=-1)  # (S, R, Q, 3)
        return grid.reshape(-1, 3).to(torch.float32)  # (N, 3)

    def _check_frames(self, num_frames: int) -> None:
        if num_frames <= 0 or num_frames % self.tubelet:
            raise ValueError(
                f"PatchCodec: num_frames={num_frames} must be a positive multiple of tubelet={self.tubelet}; "
                "trim or pad the clip to whole tubelets"
            )
