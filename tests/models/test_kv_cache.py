"""KVCache by value: what a write appends and what a roll keeps, per modality."""

from __future__ import annotations

import pytest
import torch

from lightning_mf.models.kv_cache import KVCache
from lightning_mf.models.masks import Layout


def _write(cache: KVCache, modality: str, chunks: list[int], layers: int = 2) -> None:
    chunk = torch.tensor(chunks)
    keys = [torch.full((1, 1, len(chunks), 2), float(i)) + chunk[None, None, :, None] for i in range(layers)]
    cache.append(modality, Layout(chunk, torch.ones(len(chunks), dtype=torch.bool)), keys, [-k for k in keys])


def test_a_roll_trims_every_modality_even_after_one_that_keeps_everything() -> None:
    """The newest chunk is the newest over all modalities; a modality with nothing to drop must not stop the roll of
    the next one (``continue``, not ``break``)."""
    cache = KVCache(window=1)
    _write(cache, "video", [0, 3])
    _write(cache, "audio", [0, 1, 2, 3])
    cache.roll()
    assert cache.layout("video").chunk.tolist() == [0, 3] and cache.layout("audio").chunk.tolist() == [0, 3]
    for layer in range(2):
        k, v = cache.get("audio", layer)
        assert k[0, 0, :, 0].tolist() == [layer + 0.0, layer + 3.0] and torch.equal(v, -k)
    assert cache.get("video", 0)[0].shape[2] == 2


def test_appends_concatenate_per_layer_and_an_unbounded_cache_never_rolls() -> None:
    cache = KVCache()
    _write(cache, "video", [0])
    _write(cache, "video", [1, 1])
    cache.roll()
    assert cache.layout("video").chunk.tolist() == [0, 1, 1] and cache.get("audio", 0) is None
    assert cache.get("video", 1)[0][0, 0, :, 0].tolist() == [1.0, 2.0, 2.0]


def test_only_clean_context_is_cached_and_a_window_is_a_chunk_or_more() -> None:
    with pytest.raises(ValueError, match="window must be at least 1 chunk, got 0"):
        KVCache(window=0)
    cache = KVCache()
    with pytest.raises(ValueError, match="cached tokens are context and must be marked clean"):
        cache.append("video", Layout(torch.tensor([1]), torch.tensor([False])), [torch.zeros(1, 1, 1, 2)], [torch.zeros(1, 1, 1, 2)])
