"""KVCache: keys and values of already generated chunks, per modality and layer, with a rolling window + sink."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_mf.models.masks import SINK_CHUNK, Layout

__all__ = ["KVCache"]


class KVCache:
    """What streaming generation remembers (METHOD §3 "KV cache").

    Keys are stored after rotary embedding (positions are absolute times, and RoPE depends only on differences);
    the transformer re-indexes the sink when it reads them, by rotating a copy of its keys forward in time so that it
    stays just behind the window (``models/masks.py``).
    With ``window`` W, after each write only the first-frame sink (chunk 0) and the W newest chunks are kept, so
    memory and per-chunk cost stay flat however long the stream runs; the kept entries are compacted (re-indexed)
    into contiguous storage.
    """

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"KVCache: window must be at least 1 chunk, got {window}")
        self.window = window
        self.k: dict[str, list[Tensor]] = {}  # modality -> per layer (B, H, N, Dh)
        self.v: dict[str, list[Tensor]] = {}
        self.layouts: dict[str, Layout] = {}

    def layout(self, modality: str) -> Layout | None:
        return self.layouts.get(modality)

    def get(self, modality: str, layer: int) -> tuple[Tensor, Tensor] | None:
        if modality not in self.k:
            return None
        return self.k[modality][layer], self.v[modality][layer]

    def append(self, modality: str, layout: Layout, keys: list[Tensor], values: list[Tensor]) -> None:
        """Add one forward's keys/values (per layer) for ``modality`` with the tokens' layout."""
        if layout.clean.logical_not().any():
            raise ValueError("KVCache.append: cached tokens are context and must be marked clean")
        if modality not in self.k:
            self.k[modality], self.v[modality], self.layouts[modality] = list(keys), list(values), layout
            return
        self.k[modality] = [torch.cat([old, new], dim=2) for old, new in zip(self.k[modality], keys)]
        self.v[modality] = [torch.cat([old, new], dim=2) for old, new in zip(self.v[modality], values)]
        self.layouts[modality] = Layout.cat([self.layouts[modality], layout])

    def roll(self) -> None:
        """Drop chunks that fell out of the window (keep the sink and the ``window`` newest chunks)."""
        if self.window is None or not self.layouts:
            return
        newest = max(int(layout.chunk.max()) for layout in self.layouts.values())
        for modality, layout in self.layouts.items():
            keep = (layout.chunk == SINK_CHUNK) | (layout.chunk > newest - self.window)
            if bool(keep.all()):
                continue
            index = keep.nonzero().squeeze(1)
            self.k[modality] = [k.index_select(2, index) for k in self.k[modality]]
            self.v[modality] = [v.index_select(2, index) for v in self.v[modality]]
            self.layouts[modality] = Layout(layout.chunk[index], layout.clean[index])
