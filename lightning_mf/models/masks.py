"""Attention masks derived from each token's chunk index and role (METHOD §3, §4).

One rule serves every layout. A token is *clean* (context: the first-frame prefix, a cached or teacher-forcing
copy of a chunk) or *noisy* (being denoised). Query q may attend to key k when

    (k is clean and k.chunk < q.chunk)  or  (k.chunk == q.chunk and k.clean == q.clean)

so clean tokens are block-causal among themselves and a noisy chunk sees the clean past and itself. Marking every
token clean gives the plain block-causal mask of a full forward; the teacher-forcing sequence
``[clean 1..L ; noisy 1..L]`` gets "noisy chunk k sees clean chunks < k and itself"; video and audio tokens share
chunk indices, so the joint masks follow. A window of W chunks adds ``k.chunk >= q.chunk - W or k.chunk == 0``
(chunk 0 is the first-frame sink).

The sink follows the window (METHOD §3, "re-indexed on roll"): a query of chunk k > W + 1 sees the sink as if it
sat just before the oldest chunk it still sees, i.e. moved forward in time by :func:`sink_shift` = k - 1 - W
chunks, so the time distances attention is asked about never exceed those of a training window of W + 1 chunks,
however long the stream runs. The transformer appends a time-shifted copy of the sink keys per shift in use and
``attention_mask`` lets each query see only the copy of its own shift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Layout", "attention_mask", "mask_mod", "sink_shift"]

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


def sink_shift(chunk: Tensor, window: int | None) -> Tensor:
    """Chunks by which queries of chunk indices ``chunk`` see the sink moved forward: ``max(0, k - 1 - W)``."""
    if window is None:
        return torch.zeros_like(chunk)
    return (chunk - 1 - window).clamp(min=0)


def attention_mask(q: Layout, k: Layout, window: int | None = None, k_shift: Tensor | None = None) -> Tensor:
    """Boolean mask (Nq, Nk), True where a query may attend to a key (see the module docstring).

    ``k_shift`` (Nk,): the shift (in chunks) of each sink key copy (0 for every other key); a query sees only the
    sink copy of its own :func:`sink_shift`. None: no copies (every query's shift is 0).
    """
    k_shift = torch.zeros_like(k.chunk) if k_shift is None else k_shift
    return _allowed(q.chunk[:, None], q.clean[:, None], k.chunk[None, :], k.clean[None, :], k_shift[None, :], window)


def mask_mod(q: Layout, k: Layout, window: int | None = None, k_shift: Tensor | None = None) -> Callable[..., Tensor]:
    """The rule of :func:`attention_mask` as a ``flex_attention`` ``mask_mod(b, h, q_idx, kv_idx)``: the block mask
    built from it skips whole blocks of keys a query block cannot see (earlier chunks outside the window, later
    chunks), where a dense mask is O(Nq Nk) memory and rules out the fused kernels."""
    k_shift = torch.zeros_like(k.chunk) if k_shift is None else k_shift

    def allowed(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return _allowed(q.chunk[q_idx], q.clean[q_idx], k.chunk[kv_idx], k.clean[kv_idx], k_shift[kv_idx], window)

    return allowed


def _allowed(qc: Tensor, q_clean: Tensor, kc: Tensor, k_clean: Tensor, k_shift: Tensor, window: int | None) -> Tensor:
    """The rule, element-wise on broadcastable chunk indices, clean flags and sink-copy shifts."""
    allowed = (k_clean & (kc < qc)) | ((kc == qc) & (k_clean == q_clean))
    if window is not None:
        allowed = allowed & ((kc >= qc - window) | (kc == SINK_CHUNK))
        allowed = allowed & ((kc != SINK_CHUNK) | (k_shift == sink_shift(qc, window)))
    return allowed
