"""Masked self-attention over token layouts: SDPA with a dense mask on the CPU, flex attention with a block mask on CUDA.

The mask is one rule (``models/masks.py``). SDPA needs it as a dense boolean (Nq, Nk) tensor, which costs O(Nq Nk)
memory and rules out the fused flash kernels on CUDA; ``flex_attention`` takes the same rule as a ``mask_mod`` and
builds a block mask that skips whole blocks a query block cannot see (later chunks, chunks outside the window). Both
give the same outputs (``tests/models/test_attention.py``). :func:`attention_backend` picks one: ``auto`` (flex on
CUDA, SDPA elsewhere), ``sdpa`` or ``flex`` (e.g. flex on the CPU, to compare them).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_mf.models.masks import Layout, attention_mask, mask_mod

__all__ = ["BACKENDS", "LayoutMask", "attend", "attend_layouts", "attention_backend"]

BACKENDS = ("auto", "sdpa", "flex")
_backend = "auto"
_compiled_flex: Any = None


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Use the ``name`` backend (``auto``, ``sdpa`` or ``flex``) for the self-attention of every forward inside."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    before, _backend = _backend, name
    try:
        yield
    finally:
        _backend = before


@dataclass
class LayoutMask:
    """Who may attend to whom between a query and a key layout (``masks.attention_mask``'s arguments), in the form a
    backend needs, each built once per forward and shared by the layers."""

    q: Layout
    k: Layout
    window: int | None = None
    k_shift: Tensor | None = None
    _dense: Tensor | None = field(default=None, repr=False)
    _block: Any = field(default=None, repr=False)

    def dense(self) -> Tensor:
        """(Nq, Nk) bool."""
        if self._dense is None:
            self._dense = attention_mask(self.q, self.k, self.window, self.k_shift)
        return self._dense

    def block(self) -> Any:
        """The ``flex_attention`` BlockMask of the same rule."""
        if self._block is None:
            from torch.nn.attention.flex_attention import create_block_mask

            rule = mask_mod(self.q, self.k, self.window, self.k_shift)
            self._block = create_block_mask(rule, None, None, len(self.q), len(self.k), device=self.q.chunk.device)
        return self._block


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Masked attention (B, H, Nq, Dh) with a dense boolean mask; a query with no visible key gets zeros (e.g. the
    video prefix looking at audio, which has no prefix) instead of the NaN of a softmax over nothing."""
    empty = ~mask.any(-1)  # (..., Nq)
    if bool(empty.any()):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty[..., None])
        return out.masked_fill(empty[..., None], 0.0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attend_layouts(q: Tensor, k: Tensor, v: Tensor, mask: LayoutMask) -> Tensor:
    """Masked attention (B, H, Nq, Dh) under a layout rule, by the current backend (see the module docstring)."""
    if _backend == "flex" or (_backend == "auto" and q.is_cuda):
        return _flex(q, k, v, mask)
    return attend(q, k, v, mask.dense())


def _flex(q: Tensor, k: Tensor, v: Tensor, mask: LayoutMask) -> Tensor:
    """flex attention; compiled on CUDA (the fused kernel), eager elsewhere (a reference, for tests). A query with
    no visible key gets zeros, as with :func:`attend`."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=True)
        return _compiled_flex(q, k, v, block_mask=mask.block())
    with warnings.catch_warnings():  # the unfused reference is what is wanted here
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=mask.block())
