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


def test_without_autograd_extend_reads_in_place_and_leaves_the_cache_unchanged() -> None:
    """Generation stages the current keys behind the cached ones and attends to a view: same values as a
    concatenation, no copy of the cache, and nothing cached until ``append``; the buffer grows keeping its tokens."""
    cache = KVCache()
    _write(cache, "video", [0])
    new_k, new_v = torch.full((1, 1, 3, 2), 7.0), torch.full((1, 1, 3, 2), -7.0)
    with torch.no_grad():
        for _ in range(2):  # the second call reuses the spare capacity the first one made
            k, v = cache.extend("video", 1, [new_k], [new_v])
            assert k[0, 0, :, 0].tolist() == [1.0, 7.0, 7.0, 7.0] and v[0, 0, :, 0].tolist() == [-1.0, -7.0, -7.0, -7.0]
            assert k.data_ptr() == cache.k["video"][1].data_ptr()  # a view of the buffer, not a new tensor
        assert cache.layout("video").chunk.tolist() == [0] and cache.get("video", 1)[0].shape[2] == 1
        for chunk in range(1, 5):  # appends past the capacity: the buffer doubles and keeps what it held
            _write(cache, "video", [chunk])
    assert cache.get("video", 1)[0][0, 0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert cache.k["video"][1].shape[2] >= 5


def test_with_autograd_extend_concatenates_so_gradients_reach_the_keys() -> None:
    """A training step attending to the cache: keys of a graph are never overwritten, gradients flow to them."""
    cache = KVCache()
    k0 = torch.ones(1, 1, 2, 2, requires_grad=True)
    cache.append("video", Layout(torch.tensor([0, 0]), torch.ones(2, dtype=torch.bool)), [k0], [k0 * 2])
    new = torch.full((1, 1, 1, 2), 3.0, requires_grad=True)
    k, v = cache.extend("video", 0, [new], [new])
    assert k.data_ptr() != cache.k["video"][0].data_ptr() and k[0, 0, :, 0].tolist() == [1.0, 1.0, 3.0]
    (k.sum() + v.sum()).backward()
    assert new.grad.tolist() == [[[[2.0, 2.0]]]] and k0.grad.tolist() == [[[[3.0, 3.0], [3.0, 3.0]]]]
    with torch.no_grad():  # a buffer of a graph is not written in place, even without autograd
        cache.append("video", Layout(torch.tensor([1]), torch.tensor([True])), [new.detach()], [new.detach()])
    assert cache.get("video", 0)[0][0, 0, :, 0].tolist() == [1.0, 1.0, 3.0] and k0.grad is not None
    streamed = KVCache()  # written by generation (no autograd), then read by a training step
    with torch.no_grad():
        _write(streamed, "video", [0])
    k, _ = streamed.extend("video", 0, [new], [new])
    assert k.requires_grad and k.data_ptr() != streamed.k["video"][0].data_ptr()
    assert not streamed.k["video"][0].requires_grad


def test_under_autocast_the_cache_is_written_in_the_autocast_dtype() -> None:
    """bf16-mixed generation keeps its keys and values in bf16 (half the memory of a long stream's cache), and
    reading them back in a later step works in that dtype."""
    from lightning_mf.models import AVTransformer

    from tiny_models import CHUNK_SECONDS, select, sequence, tower

    model = AVTransformer({"video": tower("video")}, CHUNK_SECONDS)
    tokens = sequence(("video",), 2)["video"]
    cache = KVCache()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for k in range(3):
            out = model({"video": select(tokens, tokens.layout.chunk == k)}, cache=cache, write=True)["video"]
    assert cache.k["video"][0].dtype == torch.bfloat16 and cache.v["video"][1].dtype == torch.bfloat16
    assert torch.isfinite(out).all() and out.abs().max() > 0.1
    plain = KVCache()
    with torch.no_grad():
        model({"video": select(tokens, tokens.layout.chunk == 0)}, cache=plain, write=True)
    assert plain.k["video"][0].dtype == torch.float32  # without autocast nothing is cast
