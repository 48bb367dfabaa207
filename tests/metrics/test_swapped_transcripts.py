"""The swapped-transcript test (issue 16): generation from a clip's first frame with another clip's transcript must
follow the transcript given, not the clip the frame came from."""

from __future__ import annotations

import pytest
import torch
from helpers import synthetic_batch

from lightning_mf.batch import AVBatch
from lightning_mf.data.synthetic import PRESETS
from lightning_mf.metrics.scoring import Scorer, swap_transcripts

SPEC = PRESETS["tiny"].spec


def _clips(seeds: range) -> AVBatch:
    return synthetic_batch(seeds, 2.0)


def test_each_clip_takes_the_next_clips_transcript_and_timing_and_keeps_its_character() -> None:
    clips = _clips(range(3))
    swapped = swap_transcripts(clips)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        assert swapped.meta[i]["transcript"] == clips.meta[j]["transcript"]
        for key in ("mouth_open", "vowel"):
            assert swapped.meta[i]["ground_truth"][key] == clips.meta[j]["ground_truth"][key]
        assert swapped.meta[i]["ground_truth"]["identity"] == clips.meta[i]["ground_truth"]["identity"]
    assert swapped.video is clips.video and swapped.keys == clips.keys
    assert clips.meta[0]["transcript"] != clips.meta[1]["transcript"]  # the originals are untouched
    with pytest.raises(ValueError, match="at least 2 clips"):
        swap_transcripts(_clips(range(1)))


def test_a_voice_that_follows_the_transcript_given_and_a_mouth_that_follows_the_frame_are_told_apart() -> None:
    """Media made "from" the swapped conditions: the next clip's real voice (it follows the transcript given) and the
    clip's own real mouth (it follows the clip the first frame came from, not the transcript)."""
    clips = _clips(range(8))
    swapped = swap_transcripts(clips)
    voice = torch.roll(clips.audio, -1, dims=0)  # clip i + 1's audio: says clip i + 1's transcript
    scores = Scorer(SPEC, ("video", "audio"), vowel_classifier_clips=0).score_swapped({"video": clips.video, "audio": voice}, swapped, clips)
    assert scores["audio_timing_r"] > 0.9 and scores["audio_timing_r_frame_clip"] < 0.4
    assert scores["video_timing_r"] < 0.4 and scores["video_timing_r_frame_clip"] > 0.9
    assert scores["drift_mean"] == 0  # drift is measured from the first frames the media were conditioned on
