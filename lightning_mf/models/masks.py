"""Attention masks derived from each token's chunk index and role (METHOD §3, §4).

One rule serves every layout. A token is *clean* (context: the first-frame prefix, a cached or teacher-forcing
copy of a chunk) or *noisy* (being denoised). Query q may attend to key k when

    (k is clean and k.chunk < q.chunk)  or  (k.chunk == q.chunk and k.clean == q.clean)

so clean tokens are block-causal among themselves and a noisy chunk sees the clean past and itself. Marking every
token clean gives the plain block-causal mask of a full forward; the teacher-forcing sequence
``[clean 1..L ; noisy 1..L]`` gets "noisy chunk k sees clean chunks < k and itself"; video and audio tokens share
chunk indices, so the joint masks follow. A window of W chunks adds ``k.chunk >= q.chunk - W or k.chunk == 0``
(chunk 0 is the first-frame sink).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Layout", "attention_mask"]

SINK_CHUNK = 0


@dataclass
class Layout:
    """Chunk index (N,) long and clean flag (N,) bool of each token in a sequence."""

    chunk: Tensor
    clean: Tensor

    def __post_init__(self) -> None:
        if self.chunk.shape != self.clean.shape or self.chunk.ndim != 1:
            raise ValueError(f"Layout: chunk {tuple(self.chunk.shape)} and clean {tuple(self.clean.shape)} must be equal 1-D shapes")

    def __len__(self) -> int:
        return int(self.chunk.shape[0])

    @staticmethod
    def cat(layouts: list[Layout]) -> Layout:
        return Layout(torch.cat([x.chunk for x in layouts]), torch.cat([x.clean for x in layouts]))


def attention_mask(q: Layout, k: Layout, window: int | None = None) -> Tensor:
    """Boolean mask (Nq, Nk), True where a query may attend to a key (see the module docstring)."""
    qc, kc = q.chunk[:, None], k.chunk[None, :]
    allowed = (k.clean[None, :] & (kc < qc)) | ((kc == qc) & (k.clean[None, :] == q.clean[:, None]))
    if window is not None:
        allowed &= (kc >= qc - window) | (kc == SINK_CHUNK)
    return allowed
