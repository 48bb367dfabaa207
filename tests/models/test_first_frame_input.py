"""The first frame as a second input of every video token (``TowerConfig.first_frame_input``): each token reads the
first frame's token at its own patch, from the forward's sink chunk or from the cache the sink was written to."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_mf.models import AVTransformer, KVCache, Tower
from lightning_mf.sequence import AVSequencer, concat
from lightning_mf.spec import AVSpec
from tiny_models import TINY, randomize

SEQ = AVSequencer(AVSpec(), ("video", "audio"), patch=8, tubelet=2)  # 32 x 32 frames: 4 x 4 patches per chunk


def _frames(seed: int) -> torch.Tensor:
    return torch.randint(0, 255, (2, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _chunks(count: int, first: int = 1) -> dict:
    x = {"video": torch.randn(2, count * SEQ.tokens_per_chunk("video"), SEQ.token_dim("video"), generator=torch.Generator().manual_seed(7))}
    return SEQ.chunk_tokens(x, {"video": torch.full(x["video"].shape[:2], 0.5)}, first, clean=False)


def test_every_video_token_reads_the_first_frames_token_at_its_own_patch() -> None:
    prefix = SEQ.prefix(_frames(0))
    tokens = concat([prefix, _chunks(3)])["video"]
    n = SEQ.tokens_per_chunk("video")
    read = AVTransformer._first_frame_at("video", tokens, None, write=False)
    assert read.shape == tokens.x.shape
    torch.testing.assert_close(read, prefix["video"].x.repeat(1, 4, 1), rtol=0, atol=0)  # the sink and chunks 1..3
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(1))  # patch order is read from positions
    first = prefix["video"]
    moved = dataclasses.replace(first, x=first.x[:, shuffled], pos=first.pos[shuffled])
    again = AVTransformer._first_frame_at("video", concat([{"video": moved}, _chunks(1)])["video"], None, write=False)
    torch.testing.assert_close(again[:, n:], first.x, rtol=0, atol=0)


def test_a_streamed_chunk_reads_the_first_frame_from_the_cache_it_was_written_to() -> None:
    prefix = SEQ.prefix(_frames(0))
    cache = KVCache(window=1)
    AVTransformer._first_frame_at("video", prefix["video"], cache, write=True)
    later = _chunks(1, first=9)["video"]  # chunk 9: the sink long behind the rolling window
    torch.testing.assert_close(AVTransformer._first_frame_at("video", later, cache, write=False), prefix["video"].x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="tower.first_frame_input: the video tower reads the first frame at every token, but"):
        AVTransformer._first_frame_at("video", later, KVCache(), write=False)


def _net(on: bool) -> AVTransformer:
    config = dataclasses.replace(TINY, first_frame_input=on)
    towers = {m: Tower(SEQ.token_dim(m), config, modality=m) for m in ("video", "audio")}
    return randomize(AVTransformer(towers, SEQ.spec.chunk_seconds), std=0.2)


def test_only_a_tower_with_a_first_frame_gets_the_input_and_it_moves_every_chunk() -> None:
    net = _net(True)
    assert net.towers["video"].first_frame_embed.in_features == SEQ.token_dim("video") and net.towers["audio"].first_frame_embed is None
    assert _net(False).towers["video"].first_frame_embed is None
    chunks, n = _chunks(2), SEQ.tokens_per_chunk("video")
    with torch.no_grad():
        before = net(concat([SEQ.prefix(_frames(0)), chunks]))
        net.towers["video"].first_frame_embed.weight.zero_()  # only the attention to the sink is left to see the frame
        net.towers["video"].first_frame_embed.bias.zero_()
        after = net(concat([SEQ.prefix(_frames(0)), chunks]))
    change = (before["video"] - after["video"]).abs().unflatten(1, (3, n)).mean((0, 2, 3))  # per chunk: sink, 1, 2
    assert bool((change > 1e-2 * after["video"].abs().mean()).all())
