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


def _dropout_net(p: float) -> AVTransformer:
    config = dataclasses.replace(TINY, first_frame_input=True, first_frame_dropout=p)
    towers = {m: Tower(SEQ.token_dim(m), config, modality=m) for m in ("video", "audio")}
    return randomize(AVTransformer(towers, SEQ.spec.chunk_seconds), std=0.2)


def test_first_frame_dropout_leaves_out_whole_rows_only_in_training_forwards_with_gradients() -> None:
    net = _dropout_net(0.5)
    frames = torch.randint(0, 255, (16, 3, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    x = {"video": torch.randn(16, 2 * SEQ.tokens_per_chunk("video"), SEQ.token_dim("video"), generator=torch.Generator().manual_seed(7))}
    tokens = concat([SEQ.prefix(frames), SEQ.chunk_tokens(x, {"video": torch.full(x["video"].shape[:2], 0.5)}, 1, clean=False)])
    net.eval()
    with torch.no_grad():
        kept = net(tokens)["video"]
        embed = net.towers["video"].first_frame_embed
        saved = [p.detach().clone() for p in embed.parameters()]
        for p in embed.parameters():
            p.zero_()
        dropped = net(tokens)["video"]  # the same rows without the input
        for p, value in zip(embed.parameters(), saved):
            p.copy_(value)
    net.train()
    with torch.no_grad():  # sampling inside training (rollouts, evaluation) still reads the first frame
        torch.testing.assert_close(net(tokens)["video"], kept, rtol=0, atol=0)
    torch.manual_seed(0)
    out = net(tokens)["video"].detach()
    is_kept = [torch.allclose(out[b], kept[b], atol=1e-5) for b in range(16)]
    is_dropped = [torch.allclose(out[b], dropped[b], atol=1e-5) for b in range(16)]
    assert all(k != d for k, d in zip(is_kept, is_dropped))  # each row whole: one or the other
    assert 3 <= sum(is_dropped) <= 13  # about half of 16 rows


def test_first_frame_dropout_is_checked_and_stays_out_of_stage_3() -> None:
    with pytest.raises(ValueError, match=r"first_frame_dropout must be in \[0, 1\)"):
        dataclasses.replace(TINY, first_frame_input=True, first_frame_dropout=1.0)
    with pytest.raises(ValueError, match="set first_frame_input: true too"):
        dataclasses.replace(TINY, first_frame_dropout=0.5)
    from lightning_mf.lit import MutualForcing

    with pytest.raises(ValueError, match="first_frame_dropout is for stages 1-2"):
        MutualForcing(tower=dataclasses.replace(TINY, first_frame_input=True, first_frame_dropout=0.5))


def test_a_stage_may_start_from_a_checkpoint_trained_with_another_first_frame_dropout() -> None:
    from lightning_mf.lit import JointTraining

    on = dataclasses.replace(TINY, first_frame_input=True)
    stage = JointTraining(tower=on)  # e.g. stage 3 (no dropout) from stage 2 (0.5): the same weights
    stage.check_shapes({"tower": dataclasses.asdict(dataclasses.replace(on, first_frame_dropout=0.5))}, "the checkpoint")
    with pytest.raises(ValueError, match="was trained with tower=.*make them equal"):
        stage.check_shapes({"tower": dataclasses.asdict(dataclasses.replace(on, first_frame_input=False))}, "the checkpoint")
