"""LipSync: SyncNet-style lip-sync error over time offsets (METHOD §6), as a torchmetrics Metric.

For every clip, per-frame video embeddings ``v_t`` and audio embeddings ``a_t`` (from any embedder, e.g. the
in-repo SyncNet towers) are compared at offsets ``o`` in ``[-max_offset, max_offset]``:
``D(o) = mean_t ||v_t - a_{t+o}||`` over the frames where both exist. Per clip, LSE-D = min_o D(o),
LSE-C = median_o D(o) - min_o D(o) (confidence: how much the best offset stands out), offset = argmin_o D(o).
LSE-D and LSE-C are averaged over clips; the AV offset is the argmin of the clip-averaged D.

Sign: offset ``o`` means video frame t matches audio frame t + o, i.e. **a positive offset is audio that lags the
video** by o frames (audio delayed by 3 frames reports +3).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_mf.metrics.intervals import mean_ci95

__all__ = ["LipSync", "SyncEmbedder", "clip_scores", "offset_distances"]


class SyncEmbedder(Protocol):
    """Per-frame embeddings of both modalities on the same time axis: (B, T, E) each."""

    def embed_video(self, video: Tensor) -> Tensor: ...

    def embed_audio(self, audio: Tensor) -> Tensor: ...


def offset_distances(video_emb: Tensor, audio_emb: Tensor, max_offset: int) -> Tensor:
    """``D[b, o + max_offset] = mean_t ||v[b, t] - a[b, t + o]||`` for o in [-max_offset, max_offset] -> (B, 2K+1)."""
    if video_emb.shape != audio_emb.shape or video_emb.ndim != 3:
        raise ValueError(f"LipSync: video and audio embeddings must both be (B, T, E), got {tuple(video_emb.shape)} and {tuple(audio_emb.shape)}")
    frames = video_emb.shape[1]
    if frames <= max_offset:
        raise ValueError(f"LipSync: clips of {frames} frames are too short for max_offset={max_offset}; use max_offset < {frames}")
    out = []
    for o in range(-max_offset, max_offset + 1):
        v = video_emb[:, max(0, -o) : frames - max(0, o)]  # frames t with 0 <= t + o < T
        a = audio_emb[:, max(0, o) : frames - max(0, -o)]
        out.append((v - a).norm(dim=-1).mean(dim=1))  # (B,)
    return torch.stack(out, dim=1)  # (B, 2K+1)


def clip_scores(distances: Tensor) -> dict[str, Tensor]:
    """Per-clip ``lse_d``, ``lse_c`` and ``av_offset`` (frames) from ``offset_distances`` (B, 2K+1) -> (B,) each."""
    best, index = distances.min(dim=1)
    max_offset = (distances.shape[1] - 1) // 2
    return {"lse_d": best, "lse_c": distances.median(dim=1).values - best, "av_offset": index - max_offset}


class LipSync(Metric):
    """LSE-D, LSE-C (means over clips, with 95% intervals ``lse_d_ci95``, ``lse_c_ci95``) and AV offset,
    accumulated over batches and reduced across processes.

    Args:
        embedder: module with ``embed_video`` (B, T, 3, H, W) -> (B, T, E) and ``embed_audio`` (B, S) -> (B, T, E);
            may be None when only ``update_embeddings`` is used.
        max_offset: largest offset in frames (the SyncNet protocol uses 15; short clips need fewer).
    """

    higher_is_better = None
    full_state_update = False

    def __init__(self, embedder: nn.Module | None = None, max_offset: int = 15, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # torchmetrics options, e.g. sync_on_compute=False for rank-local use
        self.embedder, self.max_offset = embedder, max_offset
        self.add_state("lse_d_clips", default=[], dist_reduce_fx="cat")  # per clip
        self.add_state("lse_c_clips", default=[], dist_reduce_fx="cat")
        self.add_state("clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("distance_sum", torch.zeros(2 * max_offset + 1, dtype=torch.float64), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, video: Tensor, audio: Tensor) -> None:
        """Embed a batch of clips with the embedder and accumulate."""
        if self.embedder is None:
            raise ValueError("LipSync was built without an embedder: use update_embeddings, or pass embedder=SyncNet(...)")
        self.update_embeddings(self.embedder.embed_video(video), self.embedder.embed_audio(audio))

    def update_embeddings(self, video_emb: Tensor, audio_emb: Tensor) -> None:
        distances = offset_distances(video_emb.double(), audio_emb.double(), self.max_offset)  # (B, O)
        scores = clip_scores(distances)
        self.lse_d_clips.append(scores["lse_d"])
        self.lse_c_clips.append(scores["lse_c"])
        self.clips += distances.shape[0]
        self.distance_sum += distances.sum(dim=0)

    def compute(self) -> dict[str, Tensor]:
        if int(self.clips) == 0:
            raise ValueError("LipSync.compute called before any update")
        (lse_d, lse_d_ci95), (lse_c, lse_c_ci95) = (mean_ci95(dim_zero_cat(v)) for v in (self.lse_d_clips, self.lse_c_clips))
        return {
            "lse_d": lse_d.float(), "lse_d_ci95": lse_d_ci95.float(), "lse_c": lse_c.float(), "lse_c_ci95": lse_c_ci95.float(),
            "av_offset": torch.argmin(self.distance_sum) - self.max_offset,
        }
