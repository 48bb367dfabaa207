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

    Storage: per layer one buffer (B, H, capacity, Dh) whose first ``len(layout)`` tokens are the cache. Without
    autograd (streaming generation) a forward's keys are staged in the spare capacity behind them and attention reads
    ``[cached ; current]`` as a view (:meth:`extend`): no copy of the whole cache per denoising step, which made the
    cost of a step grow with the stream (issue 15). With autograd (a training step attending to the cache) the same
    call concatenates, so gradients flow to the current keys and nothing saved for backward is overwritten.
    """

    def __init__(self, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"KVCache: window must be at least 1 chunk, got {window}")
        self.window = window
        self.k: dict[str, list[Tensor]] = {}  # modality -> per layer (B, H, capacity, Dh)
        self.v: dict[str, list[Tensor]] = {}
        self.layouts: dict[str, Layout] = {}
        # modality -> the first frame's tokens (B, P, C), the table from patch index to token and the patch columns, for
        # towers that read it at every token (TowerConfig.first_frame_input); kept from the write of the sink, which
        # never rolls out
        self.first_frame: dict[str, tuple[Tensor, Tensor, int]] = {}

    def layout(self, modality: str) -> Layout | None:
        return self.layouts.get(modality)

    def get(self, modality: str, layer: int) -> tuple[Tensor, Tensor] | None:
        """The cached keys and values (B, H, N, Dh) of one layer, or None if ``modality`` has none."""
        if modality not in self.k:
            return None
        n = len(self.layouts[modality])
        return self.k[modality][layer][:, :, :n], self.v[modality][layer][:, :, :n]

    def extend(self, modality: str, layer: int, keys: list[Tensor], values: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``[cached ; *keys]`` and ``[cached ; *values]`` along the token axis, without changing the cache.

        In place (the parts copied behind the cached tokens, a view of the buffer returned) when autograd is off and
        the buffer is not part of a graph; otherwise a concatenation. A view is valid until the next call."""
        n = len(self.layouts[modality])
        if not self._in_place(modality, layer):
            k_buf, v_buf = self.k[modality][layer], self.v[modality][layer]
            return torch.cat([k_buf[:, :, :n], *keys], dim=2), torch.cat([v_buf[:, :, :n], *values], dim=2)
        end = n + sum(k.shape[2] for k in keys)
        k_buf, v_buf = self._reserve(modality, layer, end)
        for k, v in zip(keys, values):
            k_buf[:, :, n : n + k.shape[2]].copy_(k)
            v_buf[:, :, n : n + k.shape[2]].copy_(v)
            n += k.shape[2]
        return k_buf[:, :, :end], v_buf[:, :, :end]

    def append(self, modality: str, layout: Layout, keys: list[Tensor], values: list[Tensor]) -> None:
        """Add one forward's keys/values (per layer) for ``modality`` with the tokens' layout."""
        if layout.clean.logical_not().any():
            raise ValueError("KVCache.append: cached tokens are context and must be marked clean")
        if modality not in self.k:
            self.k[modality], self.v[modality], self.layouts[modality] = list(keys), list(values), layout
            return
        for layer, (k, v) in enumerate(zip(keys, values)):
            if self._in_place(modality, layer):  # staged behind the cached tokens; cached once the layout grows
                self.extend(modality, layer, [k], [v])
            else:
                self.k[modality][layer], self.v[modality][layer] = self.extend(modality, layer, [k], [v])
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

    def _in_place(self, modality: str, layer: int) -> bool:
        """Whether a layer's buffers may be written in place: not while autograd records, nor into a graph's tensors."""
        return not (torch.is_grad_enabled() or self.k[modality][layer].requires_grad or self.v[modality][layer].requires_grad)

    def _reserve(self, modality: str, layer: int, size: int) -> tuple[Tensor, Tensor]:
        """The layer's buffers, grown (doubling) to hold at least ``size`` tokens; the cached tokens are kept."""
        k_buf, v_buf = self.k[modality][layer], self.v[modality][layer]
        if k_buf.shape[2] < size:
            n = len(self.layouts[modality])
            grown = []
            for buf in (k_buf, v_buf):
                new = buf.new_empty(*buf.shape[:2], max(size, 2 * buf.shape[2]), buf.shape[3])
                new[:, :, :n] = buf[:, :, :n]
                grown.append(new)
            self.k[modality][layer], self.v[modality][layer] = k_buf, v_buf = grown
        return k_buf, v_buf
