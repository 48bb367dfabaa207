"""SyncNet-style audio and video encoders (METHOD §6): per-frame embeddings on a shared time axis.

The public SyncNet weights cannot be fetched here, so the repo trains its own (``lit/syncnet.py``) and also loads
a user's weights file. The video tower sees ``window`` frames centred on frame t (the lower half of the frame,
where the mouth is, by default); the audio tower sees the mel frames of the same span. Embeddings are unit-norm,
so distances lie in [0, 2].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mf.codecs import MelCodec
from lightning_mf.models.weights import load_weights
from lightning_mf.spec import AVSpec

__all__ = ["SyncNet"]


def _windows(x: Tensor, window: int) -> Tensor:
    """(B, T, ...) -> (B, T, window, ...): the window centred on each step, edges replicated."""
    half = window // 2
    index = (torch.arange(x.shape[1], device=x.device)[:, None] + torch.arange(-half, window - half, device=x.device)).clamp(0, x.shape[1] - 1)
    return x[:, index]  # (B, T, window, ...)


class SyncNet(nn.Module):
    """Two small encoders whose embeddings are close when a face and a voice are in sync.

    Args:
        spec: rates and frame size.
        window: video frames per embedding (odd; the audio tower sees the same span).
        dim: embedding size.
        n_mels: mel bands of the audio input.
        lower_half: look at the lower half of the frame only (the mouth region of a centred face).
        weights: optional path to a state_dict (or a Lightning checkpoint of ``SyncNetTraining``) to load.
    """

    def __init__(
        self, spec: AVSpec = AVSpec(), window: int = 5, dim: int = 64, n_mels: int = 32, lower_half: bool = True, weights: str | None = None
    ) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"SyncNet: window must be an odd number of frames, got {window}")
        self.spec, self.window, self.lower_half = spec, window, lower_half
        self.codec = MelCodec(spec, n_mels=n_mels)
        self.video = nn.Sequential(
            nn.Conv2d(3 * window, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, dim),
        )
        self.audio = nn.Sequential(
            nn.Conv1d(n_mels, 64, 3, padding=1), nn.GELU(),
            nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, dim),
        )
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str) -> None:
        """Load a user-provided state_dict or a ``SyncNetTraining`` checkpoint (keys under ``net.``)."""
        load_weights(self, path, prefix="net.")

    def embed_video(self, video: Tensor) -> Tensor:
        """Frames (B, T, 3, H, W) uint8 or float in [-1, 1] -> (B, T, dim)."""
        x = video.float() / 127.5 - 1 if video.dtype == torch.uint8 else video.float()
        if self.lower_half:
            x = x[..., x.shape[-2] // 2 :, :]
        batch, frames = x.shape[:2]
        x = _windows(x, self.window).flatten(2, 3)  # (B, T, window * 3, H', W')
        out = self.video(x.flatten(0, 1)).view(batch, frames, -1)
        return F.normalize(out, dim=-1)

    def embed_audio(self, audio: Tensor) -> Tensor:
        """Waveforms (B, S) -> (B, T, dim), one embedding per video frame."""
        mel = self.codec.encode(audio.float())  # (B, M, n_mels)
        batch, per_frame = mel.shape[0], self.spec.mels_per_frame
        frames = mel.shape[1] // per_frame
        mel = mel.view(batch, frames, per_frame, -1)  # (B, T, mels_per_frame, n_mels)
        x = _windows(mel, self.window).flatten(2, 3).transpose(2, 3)  # (B, T, n_mels, window * mels_per_frame)
        out = self.audio(x.flatten(0, 1)).view(batch, frames, -1)
        return F.normalize(out, dim=-1)
