"""The transcript track (``TowerConfig.transcript_track``): every token reads what is spoken at each frame it covers,
pauses and a dropped transcript included, so the transcript's timing reaches it without cross-attention."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_mf.batch import Cond, token_id
from lightning_mf.models import AVTransformer, Tower
from lightning_mf.sequence import AVSequencer
from lightning_mf.spec import AVSpec
from tiny_models import TINY, randomize, sequence

WORDS = [[{"token": "a", "start": 0.10, "end": 0.30}, {"token": "o", "start": 0.50, "end": 0.55}], []]
VOCAB = 16
PAUSE = VOCAB + 1


def test_spoken_at_gives_the_token_inside_its_span_a_pause_outside_and_nothing_without_a_transcript() -> None:
    cond = Cond.from_transcripts(WORDS, VOCAB)
    times = torch.tensor([0.0, 0.0999, 0.10, 0.2999, 0.30, 0.52, 0.55, 9.0])
    a, o = token_id("a", VOCAB), token_id("o", VOCAB)
    assert cond.spoken_at(times, PAUSE).tolist() == [
        [PAUSE, PAUSE, a, a, PAUSE, o, PAUSE, PAUSE],  # [start, end): the end belongs to the pause
        [0] * 8,  # an empty transcript says nothing, like a dropped one
    ]
    assert cond.unconditional().spoken_at(times, PAUSE).eq(0).all()  # CFG's null row: no transcript, not a pause
    assert torch.equal(cond.time[0, 1:], torch.tensor([0.20, 0.525]))  # cross-attention keeps the midpoints


def test_a_video_token_reads_the_centre_of_each_frame_of_its_tubelet() -> None:
    seq = AVSequencer(AVSpec(), ("video", "audio"), patch=4, tubelet=2)  # 16 fps: frames of 62.5 ms
    assert seq.track_offsets("video") == pytest.approx((-1 / 32, 1 / 32))
    assert seq.track_offsets("audio") == (0.0,)


def _net(track: bool) -> AVTransformer:
    config = dataclasses.replace(TINY, transcript_track=track)
    towers = {"video": Tower(12, config, track_offsets=(-0.03, 0.03)), "audio": Tower(8, config)}
    return randomize(AVTransformer(towers, 0.125), std=0.2)


def test_the_track_changes_exactly_the_tokens_whose_frames_are_spoken_differently() -> None:
    """Moving a word's end from 0.30 s to 0.40 s changes what the tokens stamped near 0.375 s read (their later frame
    at +0.03 s), so only they (and through attention, later ones) move in a one-layer-deep view: check the first
    forward's input, the track itself, by value."""
    net, tokens = _net(True), sequence(("video", "audio"), chunks=4, batch=2)
    tower = net.towers["video"]
    times = tokens["video"].pos[:, 0]  # 0, 0.125, 0.25, 0.375 per chunk
    before = Cond.from_transcripts(WORDS, VOCAB)
    after = Cond.from_transcripts([[{"token": "a", "start": 0.10, "end": 0.40}, WORDS[0][1]], []], VOCAB)
    changed = (tower.transcript_track(after, times) - tower.transcript_track(before, times)).abs().amax(-1)  # (B, N)
    assert torch.equal(changed[0] > 0, (times > 0.30 - 0.03) & (times < 0.40 + 0.03))  # tokens at 0.375 only
    assert changed[1].eq(0).all()  # the other row's (empty) transcript did not change
    table_a, table_b = tower.track
    a = token_id("a", VOCAB)
    expected = table_a.weight[a] + table_b.weight[a]  # both frames of the token at 0.25 s are inside "a"
    assert torch.equal(tower.transcript_track(before, times)[0, times == 0.25][0], expected)


def test_the_track_moves_the_velocity_and_a_tower_without_it_has_no_track_weights() -> None:
    tokens = sequence(("video", "audio"), chunks=4, batch=2)
    cond = Cond.from_transcripts(WORDS, VOCAB)
    with_track = _net(True)
    with torch.no_grad():  # silence cross-attention: what moves the velocity now is the track alone
        for tower in with_track.towers.values():
            for block in tower.blocks:
                block.cross_proj.weight.zero_()
                block.cross_proj.bias.zero_()
    for m in ("video", "audio"):
        moved = with_track(tokens, cond=cond)[m] - with_track(tokens, cond=cond.unconditional())[m]
        assert moved[0].abs().max() > 0.1  # the row with words
        assert moved[1].abs().max() == 0  # the row without: no transcript either way
    without = _net(False)
    assert not [name for name in without.state_dict() if ".track." in name]
    assert without.towers["video"].transcript_track(cond, tokens["video"].pos[:, 0]) is None


@pytest.mark.parametrize(("setting", "tracked"), [(("audio",), {"audio"}), (("video", "audio"), {"video", "audio"}), (True, {"video", "audio"}), (False, set())])
def test_the_track_can_be_given_to_some_towers_only(setting: bool | tuple[str, ...], tracked: set[str]) -> None:
    """One ``TowerConfig`` serves both towers: a list names the towers that read the track (``[audio]``: the audio
    follows the transcript while the video tower is left as it was); ``true`` is every tower."""
    config = dataclasses.replace(TINY, transcript_track=setting)
    towers = {m: Tower(12, config, track_offsets=(0.0,), modality=m) for m in ("video", "audio")}
    assert {m for m, tower in towers.items() if tower.track is not None} == tracked
    assert (Tower(12, config).track is not None) == (setting is True)  # a tower of no modality: only with true
    with pytest.raises(ValueError, match=r"transcript_track lists modalities 'video' and 'audio', got \['mouth'\]"):
        dataclasses.replace(TINY, transcript_track=["audio", "mouth"])
