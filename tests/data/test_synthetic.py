"""The synthetic talking characters: determinism, shapes, and ground truth that holds on the raw arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lightning_mf.data.clip import Clip
from lightning_mf.data.synthetic import PRESETS, VOWELS, SyntheticPreset, synthesize_clip
from lightning_mf.metrics.oracle import mouth_opening
from lightning_mf.spec import AVSpec

TINY, SMALL = PRESETS["tiny"], PRESETS["small"]
F1 = {"a": 730.0, "e": 530.0, "i": 270.0, "o": 570.0, "u": 300.0}
F2 = {"a": 1090.0, "e": 1840.0, "i": 2290.0, "o": 840.0, "u": 870.0}


def clip_of(seed: int, preset: SyntheticPreset = TINY, seconds: float | None = None) -> Clip:
    return synthesize_clip(seed, preset.spec, preset.clip_seconds if seconds is None else seconds)


def frame_rms(clip: Clip, spec: AVSpec) -> np.ndarray:
    frames = clip.audio.astype(np.float64).reshape(clip.num_frames, spec.samples_per_frame)  # (T, spf)
    return np.sqrt(np.mean(frames**2, axis=1))


def colour_count(clip: Clip, colour: list[int], tolerance: int = 60) -> np.ndarray:
    """Pixels per frame within ``tolerance`` (L1 over RGB) of ``colour``: (T,)."""
    distance = np.abs(clip.video.astype(np.int64) - np.array(colour)).sum(-1)  # (T, H, W)
    return (distance < tolerance).sum(axis=(1, 2))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_presets_match_the_design() -> None:
    assert TINY.spec == AVSpec() and TINY.clip_seconds == 2.0
    assert SMALL.spec == AVSpec(fps=25, sample_rate=16000, height=64, width=64, frames_per_chunk=5, mel_hop=160)  # 125 frames = 25 chunks
    assert SMALL.clip_seconds == 5.0
    assert VOWELS == ("a", "e", "i", "o", "u")


def test_same_seed_same_bytes_other_seed_other_character() -> None:
    first, again, other = clip_of(17), clip_of(17), clip_of(18)
    assert first.video.tobytes() == again.video.tobytes() and first.audio.tobytes() == again.audio.tobytes()
    assert first.meta == again.meta and first.key == again.key == "synth-00000017"
    mine, theirs = first.meta["ground_truth"]["identity"], other.meta["ground_truth"]["identity"]
    assert mine["face"] != theirs["face"] and mine["background"] != theirs["background"] and mine["f0"] != theirs["f0"]
    assert first.video.tobytes() != other.video.tobytes()
    assert synthesize_clip(17, TINY.spec, 2.0, key="custom-key").key == "custom-key"


def test_a_longer_clip_keeps_the_character_and_the_start_of_the_transcript() -> None:
    short, long = clip_of(5, seconds=2.0), clip_of(5, seconds=3.0)
    assert short.meta["ground_truth"]["identity"] == long.meta["ground_truth"]["identity"]
    assert long.meta["transcript"][: len(short.meta["transcript"])] == short.meta["transcript"]


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_shapes_ranges_and_meta(name: str) -> None:
    preset = PRESETS[name]
    spec = preset.spec
    clip = clip_of(3, preset)
    frames = spec.frames_in(preset.clip_seconds)
    assert clip.video.shape == (frames, spec.height, spec.width, 3) and clip.video.dtype == np.uint8
    assert clip.audio.shape == (frames * spec.samples_per_frame,) and clip.audio.dtype == np.float32
    assert np.abs(clip.audio).max() <= 0.9 and frame_rms(clip, spec).max() > 0.05  # loud enough, far from clipping
    assert (clip.fps, clip.sample_rate) == (spec.fps, spec.sample_rate)
    meta = clip.meta
    assert json.loads(json.dumps(meta)) == meta
    assert meta["fps"] == spec.fps and meta["sample_rate"] == spec.sample_rate
    assert meta["num_frames"] == frames and meta["num_samples"] == clip.audio.size
    assert meta["source"] == "synthetic:seed=3" and meta["start"] == 0.0 and meta["end"] == pytest.approx(clip.seconds)
    truth = meta["ground_truth"]
    for series in ("mouth_open", "vowel", "eye_open"):
        assert len(truth[series]) == frames
    assert all(0.0 <= x <= 1.0 for x in truth["mouth_open"] + truth["eye_open"])
    assert set(truth["vowel"]) <= {"", *VOWELS}
    identity = truth["identity"]
    for colour in ("background", "face", "eye", "mouth"):
        assert len(identity[colour]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in identity[colour])
    assert 90 <= identity["f0"] <= 250 and 0.85 <= identity["timbre"] <= 1.2
    assert all(0 < x < 1 for x in identity["face_center"] + identity["face_radii"])


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_transcript_is_sorted_bounded_and_matches_the_per_frame_vowel(name: str) -> None:
    preset = PRESETS[name]
    tol = 1 / preset.spec.sample_rate
    for seed in range(4):
        clip = clip_of(seed, preset)
        transcript = clip.meta["transcript"]
        assert transcript, "a clip of a few seconds says something"
        assert 0.04 - tol <= transcript[0]["start"] <= 0.15 + tol  # a short pause first
        for entry in transcript:
            assert entry["token"] in VOWELS and 0 <= entry["start"] and entry["end"] <= clip.meta["end"]
            assert 0.12 - tol <= entry["end"] - entry["start"] <= 0.30 + tol
        for before, after in zip(transcript, transcript[1:]):
            assert 0.04 - tol <= after["start"] - before["end"] <= 0.30 + tol
        centres = (np.arange(clip.num_frames) + 0.5) / clip.fps
        expected = [next((e["token"] for e in transcript if e["start"] <= c < e["end"]), "") for c in centres]
        assert clip.meta["ground_truth"]["vowel"] == expected


def test_identity_matches_the_pixels_and_the_mouth_colour_stands_out() -> None:
    for seed in range(30):
        clip = clip_of(seed)
        identity = clip.meta["ground_truth"]["identity"]
        colours = {name: np.array(identity[name]) for name in ("background", "face", "eye", "mouth")}
        for name in ("background", "face", "eye"):
            assert np.abs(colours["mouth"] - colours[name]).sum() > 80, (seed, name)
        assert (clip.video[:, 0, 0] == colours["background"]).all()
        cx, cy = (int(f * n) for f, n in zip(identity["face_center"], (TINY.spec.width, TINY.spec.height)))
        assert (clip.video[:, cy, cx] == colours["face"]).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_mouth_opening_follows_audio_energy_at_lag_zero(seed: int) -> None:
    clip = clip_of(seed)
    mouth = np.array(clip.meta["ground_truth"]["mouth_open"])  # (T,)
    rms = frame_rms(clip, TINY.spec)  # (T,)
    speech = mouth > 0.05
    assert speech.sum() >= 8 and pearson(mouth[speech], rms[speech]) > 0.9
    assert (mouth[rms < 0.003] < 0.05).all()  # silence in the audio is a closed mouth
    lags = range(-5, 6)
    n = mouth.size
    xcorr = [pearson(mouth[max(0, -lag) : n - max(0, lag)], rms[max(0, lag) : n - max(0, -lag)]) for lag in lags]
    assert list(lags)[int(np.argmax(xcorr))] == 0


def test_the_first_frame_shows_the_mouth_colour_even_in_a_pause() -> None:
    """Clips start in a pause, so a closed mouth must still show its lips: the first frame is all a generator is given
    of the character, and the colour it opens the mouth in (and the oracle reads the mouth by) must be in it."""
    clips = [clip for clip in map(clip_of, range(20)) if clip.meta["ground_truth"]["mouth_open"][0] < 0.05]
    assert len(clips) >= 15  # most clips start with a closed mouth
    first = torch.stack([torch.from_numpy(clip.video[:1]).permute(0, 3, 1, 2) for clip in clips])  # (20, 1, 3, H, W)
    colours = torch.tensor([clip.meta["ground_truth"]["identity"]["mouth"] for clip in clips], dtype=torch.float32)
    lips = mouth_opening(first, colours)[:, 0]  # (20,) mouth height in pixels
    assert (lips > 0.3).all() and (lips < 1.5).all()  # a line, not an open mouth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drawn_mouth_tracks_the_ground_truth(seed: int) -> None:
    clip = clip_of(seed, SMALL)
    truth = clip.meta["ground_truth"]
    mouth = np.array(truth["mouth_open"])
    pixels = colour_count(clip, truth["identity"]["mouth"])  # (T,)
    assert pearson(pixels, mouth) > 0.8
    assert 0 < pixels[mouth == 0].min() and pixels[mouth == 0].max() < 0.3 * pixels.max() and pixels.max() > 30  # lips
    # width follows the vowel: wide for i/e, round and narrow for o/u
    near = np.abs(clip.video.astype(np.int64) - np.array(truth["identity"]["mouth"])).sum(-1) < 60  # (T, H, W)
    width = near.any(axis=1).sum(axis=1)  # (T,) columns holding mouth pixels
    vowel = np.array(truth["vowel"])
    open_ = mouth > 0.5
    wide, round_ = width[open_ & np.isin(vowel, ["i", "e"])], width[open_ & np.isin(vowel, ["o", "u"])]
    if wide.size and round_.size:
        assert wide.min() > round_.max()


def band_fraction(segment: np.ndarray, sample_rate: int, centre: float, rel: float = 0.2) -> float:
    """Share of the segment's power within ``rel`` of ``centre`` Hz."""
    power = np.abs(np.fft.rfft(segment * np.hanning(segment.size))) ** 2
    freqs = np.fft.rfftfreq(segment.size, 1 / sample_rate)
    return float(power[np.abs(freqs - centre) < rel * centre].sum() / power.sum())


def test_vowel_formants_are_in_the_audio() -> None:
    compared = 0
    for seed in range(12):
        clip = clip_of(seed, seconds=6.0)
        timbre = clip.meta["ground_truth"]["identity"]["timbre"]
        segments: dict[str, list[np.ndarray]] = {v: [] for v in VOWELS}
        for entry in clip.meta["transcript"]:
            a, b = round(entry["start"] * clip.sample_rate), round(entry["end"] * clip.sample_rate)
            segments[entry["token"]].append(clip.audio[a:b].astype(np.float64))

        def share(vowel: str, centre: float) -> float:
            return float(np.mean([band_fraction(s, clip.sample_rate, centre * timbre) for s in segments[vowel]]))

        if segments["a"] and segments["i"]:
            assert share("a", F1["a"]) > 2 * share("i", F1["a"]), seed  # F1 of a: high in a, low in i
            assert share("i", F2["i"]) > 2 * share("a", F2["i"]), seed  # F2 of i: high in i, low in a
            compared += 1
        if segments["u"] and segments["e"]:
            assert share("e", F2["e"]) > 2 * share("u", F2["e"]), seed
    assert compared >= 6


def test_formants_move_with_the_timbre() -> None:
    # The strongest harmonic near F2 of "i" sits next to F2 * timbre (within one harmonic), much closer than to F2.
    scaled, unscaled = [], []
    for seed in range(12):
        clip = clip_of(seed, seconds=4.0)
        identity = clip.meta["ground_truth"]["identity"]
        for entry in clip.meta["transcript"]:
            if entry["token"] != "i":
                continue
            a, b = round(entry["start"] * clip.sample_rate), round(entry["end"] * clip.sample_rate)
            segment = clip.audio[a:b].astype(np.float64)
            power = np.abs(np.fft.rfft(segment * np.hanning(segment.size), 8192)) ** 2
            freqs = np.fft.rfftfreq(8192, 1 / clip.sample_rate)
            band = (freqs > 1600) & (freqs < 3200)
            peak = freqs[band][np.argmax(power[band])]
            assert abs(peak - F2["i"] * identity["timbre"]) < identity["f0"], seed
            scaled.append(abs(peak - F2["i"] * identity["timbre"]))
            unscaled.append(abs(peak - F2["i"]))
    assert len(scaled) >= 10 and np.mean(scaled) < 0.6 * np.mean(unscaled)


def test_loudness_does_not_depend_on_the_vowel() -> None:
    peaks: dict[str, list[float]] = {v: [] for v in VOWELS}
    for seed in range(6):
        clip = clip_of(seed, seconds=6.0)
        rms = frame_rms(clip, TINY.spec)
        mouth = np.array(clip.meta["ground_truth"]["mouth_open"])
        for t, vowel in enumerate(clip.meta["ground_truth"]["vowel"]):
            if vowel and mouth[t] > 0.7:
                peaks[vowel].append(rms[t] / mouth[t])  # loudness per unit of envelope
    ratios = np.concatenate([np.array(p) for p in peaks.values()])
    assert ratios.max() / ratios.min() < 1.25


def test_eyes_close_exactly_during_blinks() -> None:
    blinks_seen = 0
    for seed in range(12):
        clip = clip_of(seed, SMALL)
        truth = clip.meta["ground_truth"]
        eye_open = np.array(truth["eye_open"])  # (T,)
        centres = (np.arange(clip.num_frames) + 0.5) / clip.fps
        in_blink = np.zeros(clip.num_frames, dtype=bool)
        for start, end in truth["blinks"]:
            assert 0.1 - 1e-6 <= end - start <= 0.2 + 1e-6 and 0 <= start and end <= clip.meta["end"]
            in_blink |= (centres > start) & (centres < end)
        assert ((eye_open < 1) == in_blink).all()
        pixels = colour_count(clip, truth["identity"]["eye"])  # (T,)
        open_pixels = np.median(pixels[~in_blink])
        assert open_pixels > 10
        assert (np.abs(pixels[~in_blink] - open_pixels) <= 0.25 * open_pixels).all()
        closing = eye_open < 0.6
        assert (pixels[closing] < open_pixels * (eye_open[closing] + 0.25)).all()
        blinks_seen += int(closing.any())
    assert blinks_seen >= 3


@pytest.mark.parametrize("seconds", [0.0, 0.01, float("nan")])
def test_too_short_or_bad_seconds_is_an_error(seconds: float) -> None:
    with pytest.raises(ValueError, match="frame"):
        synthesize_clip(0, TINY.spec, seconds)


def test_bad_seed_is_an_error() -> None:
    with pytest.raises(ValueError, match="seed"):
        synthesize_clip(-1, TINY.spec, 1.0)
