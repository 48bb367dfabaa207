"""SyncNet loss: which audio window belongs to this video window (METHOD §6)?

For every video window v[b, t] the candidates are the same clip's audio at offsets -K..K (time-shifted
negatives, the ones that teach timing) and, optionally, the other clips' audio at the same time t (who is
speaking); cross-entropy picks the aligned one over cosine similarities. A shift that falls off the clip is masked.
Measured on the tiny preset: with other-clip negatives 300 steps did not learn timing (wrong offsets, 5 % accuracy),
without them 300 steps recover offsets 0 and +-3 on unseen characters, hence ``other_clips=False`` by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sync_contrastive_loss"]


def sync_contrastive_loss(
    video_emb: Tensor, audio_emb: Tensor, max_shift: int = 6, temperature: float = 0.1, other_clips: bool = False
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy (the aligned audio wins) for unit-norm embeddings (B, T, E) of aligned clips."""
    batch, frames, _ = video_emb.shape
    time = torch.arange(frames, device=video_emb.device)
    shifted = []
    for o in range(-max_shift, max_shift + 1):
        index = time + o
        sim = (video_emb * audio_emb[:, index.clamp(0, frames - 1)]).sum(-1)  # (B, T)
        shifted.append(sim.masked_fill(((index < 0) | (index >= frames))[None], float("-inf")))
    candidates = [torch.stack(shifted, dim=-1)]  # (B, T, 2K+1)
    if other_clips:
        others = torch.einsum("bte,cte->btc", video_emb, audio_emb)  # (B, T, B): other clips at the same time
        candidates.append(others.masked_fill(torch.eye(batch, dtype=torch.bool, device=others.device)[:, None, :], float("-inf")))
    logits = torch.cat(candidates, dim=-1) / temperature
    target = torch.full((batch * frames,), max_shift, device=logits.device)  # offset 0 is the aligned pair
    logits = logits.flatten(0, 1)
    return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()
