"""How media become the model's token sequences: codecs, chunk layouts, positions and the first-frame prefix.

Chunk 0 is the first-frame prefix (video only, clean, time 0); chunks 1..L are the window's chunks, chunk k
covering seconds ``[(k - 1) * chunk_seconds, k * chunk_seconds)`` for both modalities (METHOD §2). Every
consumer (teacher-forcing training, streaming, prediction) builds its :class:`~lightning_mf.models.Tokens`
through :class:`AVSequencer`, so positions and layouts are defined once.

One time axis: every token is stamped at the centre of the span of time it covers, the way the data is made
(frame ``t`` shows the interval ``[t / fps, (t + 1) / fps)``: its mouth opening is the audio envelope over that
interval). So a video tubelet of frames ``t .. t + tubelet - 1`` sits at ``(t + tubelet / 2) / fps``, mel frame
``i`` at ``(i + 0.5) * mel_hop / sample_rate`` (the hop of samples it stands for; its analysis window is centred
half a hop earlier, 8 ms at the tiny preset, well inside the window's own 64 ms), a transcript token at the
midpoint of its ``[start, end)``, and the first-frame prefix at the centre of frame 0, ``0.5 / fps``. Tokens of the
same instant therefore get the same time in every modality, and RoPE sees true time differences between them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_mf.batch import AVBatch
from lightning_mf.codecs import MelCodec, PatchCodec
from lightning_mf.codecs.plugin import build_codec
from lightning_mf.codecs.video import to_uint8
from lightning_mf.models.masks import Layout
from lightning_mf.models.transformer import Tokens
from lightning_mf.spec import AVSpec

__all__ = ["AVSequencer", "MODALITIES"]

MODALITIES = ("video", "audio")


class AVSequencer(nn.Module):
    """Codecs for the modalities in use, and the geometry of their chunks.

    Args:
        spec: shared rates and sizes.
        modalities: which of ``video``/``audio`` the model handles.
        patch: PatchCodec patch size in pixels.
        tubelet: PatchCodec frames per token (must divide ``spec.frames_per_chunk``).
        n_mels: MelCodec mel bands.
        n_fft: MelCodec FFT size.
        video: import path of another video codec (e.g. a VAE), built as ``cls(spec, **video_args)``; see
            :mod:`lightning_mf.codecs.plugin` for the interface. None: PatchCodec.
        video_args: its keyword arguments.
        audio: the same for audio (None: MelCodec).
        audio_args: its keyword arguments.
    """

    def __init__(
        self, spec: AVSpec, modalities: tuple[str, ...], patch: int = 8, tubelet: int = 2, n_mels: int = 32, n_fft: int = 1024,
        video: str | None = None, video_args: dict[str, Any] | None = None, audio: str | None = None, audio_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        unknown = set(modalities) - set(MODALITIES)
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
        self.spec = spec
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        codecs: dict[str, nn.Module] = {}
        if "video" in self.modalities:
            codecs["video"] = build_codec(video, spec, dict(video_args or {}), "video") if video else PatchCodec(spec, patch=patch, tubelet=tubelet)
        if "audio" in self.modalities:
            codecs["audio"] = build_codec(audio, spec, dict(audio_args or {}), "audio") if audio else MelCodec(spec, n_mels=n_mels, n_fft=n_fft)
        self.codecs = nn.ModuleDict(codecs)

    def token_dim(self, modality: str) -> int:
        return self.codecs[modality].token_dim

    def track_offsets(self, modality: str) -> tuple[float, ...]:
        """Where a token's frames lie relative to its time stamp, in seconds: the centres of the frames of a video
        tubelet (its stamp is their midpoint); audio tokens (a mel hop) are read at their stamp."""
        if modality != "video":
            return (0.0,)
        tubelet = self.codecs["video"].tubelet
        return tuple((i + 0.5 - tubelet / 2) / self.spec.fps for i in range(tubelet))

    def tokens_per_chunk(self, modality: str) -> int:
        return self.codecs[modality].tokens_per_chunk

    def num_chunks(self, batch: AVBatch) -> int:
        frames = batch.video.shape[1]
        if frames % self.spec.frames_per_chunk:
            raise ValueError(f"a window of {frames} frames is not a whole number of {self.spec.frames_per_chunk}-frame chunks")
        return frames // self.spec.frames_per_chunk

    # ----------------------------------------------------------------------------------------------- encoding

    def encode(self, batch: AVBatch) -> dict[str, Tensor]:
        """Clean tokens x0 of every chunk: ``{m: (B, L * tokens_per_chunk, C)}``."""
        out = {}
        if "video" in self.codecs:
            out["video"] = self.codecs["video"].encode(batch.video)
        if "audio" in self.codecs:
            out["audio"] = self.codecs["audio"].encode(batch.audio)
        return out

    def prefix(self, first_frame: Tensor) -> dict[str, Tokens]:
        """The clean first-frame prefix (chunk 0) from frames (B, 3, H, W); empty for an audio-only model."""
        if "video" not in self.codecs:
            return {}
        codec = self.codecs["video"]
        frames = first_frame[:, None].expand(-1, codec.tubelet, -1, -1, -1)  # (B, tubelet, 3, H, W)
        x = codec.encode(frames)  # (B, P, C)
        pos = codec.positions(codec.tubelet, device=x.device).clone()  # (P, 3)
        pos[:, 0] = 0.5 / self.spec.fps  # the centre of frame 0, the only frame it shows
        n = x.shape[1]
        layout = Layout(torch.zeros(n, dtype=torch.long, device=x.device), torch.ones(n, dtype=torch.bool, device=x.device))
        return {"video": Tokens(x, x.new_zeros(x.shape[:2]), pos, layout)}

    def decode(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        """Tokens back to media: ``video`` (B, T, 3, H, W) uint8 and ``audio`` (B, S) float."""
        out = {}
        if "video" in x:
            out["video"] = to_uint8(self.codecs["video"].decode(x["video"]))  # clamps to [-1, 1]
        if "audio" in x:
            out["audio"] = self.codecs["audio"].decode(x["audio"]).clamp(-1, 1)
        return out

    # ----------------------------------------------------------------------------------------------- geometry

    def positions(self, modality: str, first: int, count: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Positions (N, 3) and chunk indices (N,) of chunks ``first .. first + count - 1`` (1-based)."""
        codec = self.codecs[modality]
        frames = count * self.spec.frames_per_chunk
        pos = codec.positions(frames, device=device).clone()  # (N, 3) or (N, 1), times from 0
        if pos.shape[1] == 1:
            pos = torch.cat([pos, pos.new_zeros(pos.shape[0], 2)], dim=1)  # audio: row = col = 0
        pos[:, 0] += (first - 1) * self.spec.chunk_seconds
        chunk = torch.arange(first, first + count, device=device).repeat_interleave(codec.tokens_per_chunk)
        return pos, chunk

    def chunk_tokens(self, x: dict[str, Tensor], s: dict[str, Tensor], first: int, *, clean: bool) -> dict[str, Tokens]:
        """Tokens of consecutive chunks starting at chunk ``first`` (noise levels per token ``s``)."""
        out = {}
        for m, xm in x.items():
            count = xm.shape[1] // self.tokens_per_chunk(m)
            pos, chunk = self.positions(m, first, count, device=xm.device)
            layout = Layout(chunk, torch.full_like(chunk, clean, dtype=torch.bool))
            out[m] = Tokens(xm, s[m], pos, layout)
        return out

    def per_token(self, modality: str, s_chunk: Tensor) -> Tensor:
        """Chunk noise levels (B, L) -> token noise levels (B, L * tokens_per_chunk)."""
        return s_chunk.repeat_interleave(self.tokens_per_chunk(modality), dim=1)


def concat(parts: list[dict[str, Tokens]]) -> dict[str, Tokens]:
    """Join token groups per modality along the sequence (e.g. prefix + clean context + noisy chunks)."""
    out: dict[str, Tokens] = {}
    for m in dict.fromkeys(k for part in parts for k in part):
        group = [part[m] for part in parts if m in part]
        out[m] = Tokens(
            x=torch.cat([t.x for t in group], dim=1),
            s=torch.cat([t.s for t in group], dim=1),
            pos=torch.cat([t.pos for t in group], dim=0),
            layout=Layout.cat([t.layout for t in group]),
        )
    return out
