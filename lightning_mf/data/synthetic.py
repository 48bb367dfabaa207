"""Synthetic talking characters: the embedded data set whose ground truth makes lip sync measurable (DATA.md).

Each clip is a deterministic function of its seed. A character (background, face, eye and mouth colours, face
ellipse, voice pitch and timbre) speaks a random string of vowel syllables (a e i o u, 120-300 ms, pauses of
40-300 ms): the audio is a harmonic source at f0 with vibrato shaped by two formants per vowel, an attack/release
envelope per syllable and faint noise; the video is a bobbing face whose eyes blink at random times and whose mouth
opens with the audio envelope of each frame (from a closed line of lips) and is wide for i/e, round for o/u. ``meta["ground_truth"]`` holds the
per-frame mouth opening, vowel and eye opening, the blink times and the identity parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_mf.data.clip import Clip
from lightning_mf.spec import AVSpec

__all__ = ["PRESETS", "SYNTHETIC_VERSION", "VOWELS", "SyntheticPreset", "synthesize_clip"]

VOWELS: tuple[str, ...] = ("a", "e", "i", "o", "u")


@dataclass(frozen=True)
class SyntheticPreset:
    """A named size of the synthetic data: the shared rates/resolution and the clip length."""

    spec: AVSpec
    clip_seconds: float


PRESETS: dict[str, SyntheticPreset] = {
    "tiny": SyntheticPreset(spec=AVSpec(), clip_seconds=2.0),
    "small": SyntheticPreset(
        spec=AVSpec(fps=25, sample_rate=16000, height=64, width=64, frames_per_chunk=5, mel_hop=160), clip_seconds=5.0
    ),
}

# Timing of speech and blinks, seconds.
SYLLABLE_SECONDS = (0.12, 0.30)
PAUSE_SECONDS = (0.04, 0.30)
FIRST_PAUSE_SECONDS = (0.04, 0.15)
BLINK_SECONDS = (0.10, 0.20)
BLINK_GAP_SECONDS = (1.0, 4.0)
FIRST_BLINK_SECONDS = (0.2, 2.0)
ATTACK_SECONDS, RELEASE_SECONDS = 0.025, 0.035
SYLLABLE_GAIN = (0.75, 1.0)  # per-syllable loudness; the envelope's maximum possible value is 1

# Voice.
F0_HZ = (90.0, 250.0)
TIMBRE = (0.9, 1.15)
FORMANTS_HZ = {  # (F1, F2) before the timbre factor
    "a": (730.0, 1090.0), "e": (530.0, 1840.0), "i": (270.0, 2290.0), "o": (570.0, 840.0), "u": (300.0, 870.0),
}
FORMANT_BANDWIDTHS_HZ = (90.0, 110.0)
VIBRATO_HZ, VIBRATO_DEPTH = (4.0, 6.0), (0.01, 0.02)
VOICE_RMS = 0.15  # every syllable's voiced signal has this RMS before its envelope, whatever the vowel
NOISE_STD = 1e-3

# Face geometry, as fractions of the frame (centre, radii) or of the face radii (features).
FACE_CENTER = ((0.42, 0.58), (0.46, 0.54))
FACE_RADII = ((0.26, 0.36), (0.32, 0.40))
BOB_AMPLITUDE, BOB_PERIOD_SECONDS = (0.005, 0.02), (1.5, 3.5)
EYE_OFFSET, EYE_RADII = (0.42, -0.28), (0.17, 0.15)
MOUTH_OFFSET_Y, MOUTH_MAX_HEIGHT = 0.45, 0.22
# A closed mouth still shows its lips: a line this fraction of the open height. Without it, a clip that starts in a
# pause (almost all do) hides the mouth's colour in its first frame, so no generator conditioned on that frame could
# know what colour to open it in (and the oracle, which reads the mouth by its colour, would see no mouth at all).
LIPS = 0.2
SYNTHETIC_VERSION = 2  # bumped when the same seed renders differently (2: lips), so old shards are not reused
MOUTH_WIDTH = {"a": 0.36, "e": 0.44, "i": 0.50, "o": 0.24, "u": 0.20, "": 0.36}
MIN_COLOUR_DISTANCE = 120  # L1 over RGB between any two identity colours, and from the mouth to any edge blend
SUPERSAMPLE = 4


@dataclass(frozen=True)
class _Identity:
    colours: np.ndarray  # (4, 3) background, face, eye, mouth; float64 in 0..255 (whole numbers)
    face_center: tuple[float, float]
    face_radii: tuple[float, float]
    bob_amplitude: float
    bob_period: float
    bob_phase: float
    f0: float
    timbre: float
    vibrato_hz: float
    vibrato_depth: float
    vibrato_phase: float
    harmonic_phase_seed: int


@dataclass(frozen=True)
class _Syllable:
    vowel: str
    start: int  # sample index, inclusive
    end: int  # sample index, exclusive
    gain: float


def synthesize_clip(seed: int, spec: AVSpec, seconds: float, *, key: str | None = None) -> Clip:
    """One synthetic talking-character clip of ``spec.frames_in(seconds)`` frames, fully determined by ``seed``."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not math.isfinite(seconds) or spec.frames_in(seconds) < 1:
        raise ValueError(
            f"seconds={seconds!r} holds no whole video frame at {spec.fps} fps; use at least {1 / spec.fps:.4g} s"
        )
    seed = int(seed)
    num_frames = spec.frames_in(seconds)
    num_samples = num_frames * spec.samples_per_frame
    # Independent streams, so that e.g. a longer clip keeps the same character.
    rng_identity, rng_speech, rng_blinks, rng_noise = np.random.default_rng(seed).spawn(4)

    identity = _identity(rng_identity)
    syllables = _transcript(rng_speech, num_samples, spec.sample_rate)
    blinks = _blinks(rng_blinks, num_frames / spec.fps)
    audio, envelope, owner = _audio(identity, syllables, num_samples, spec.sample_rate, rng_noise)  # (S,) x3

    frames = envelope.reshape(num_frames, spec.samples_per_frame)  # (T, spf)
    mouth_open = np.round(np.sqrt(np.mean(frames**2, axis=1)), 6)  # (T,) envelope max is 1
    centre = np.floor((np.arange(num_frames) + 0.5) * spec.samples_per_frame).astype(np.int64)
    vowel = [syllables[i].vowel if i >= 0 else "" for i in owner[centre]]
    eye_open = np.round(_eye_open(blinks, (np.arange(num_frames) + 0.5) / spec.fps), 6)  # (T,)
    video = _render(identity, spec, mouth_open, _mouth_vowels(owner, envelope, syllables, num_frames), eye_open)

    sr = spec.sample_rate
    meta: dict[str, Any] = {
        "fps": spec.fps,
        "sample_rate": sr,
        "num_frames": num_frames,
        "num_samples": num_samples,
        "source": f"synthetic:seed={seed}",
        "start": 0.0,
        "end": num_frames / spec.fps,
        "transcript": [{"token": s.vowel, "start": s.start / sr, "end": s.end / sr} for s in syllables],
        "ground_truth": {
            "mouth_open": [float(x) for x in mouth_open],
            "vowel": vowel,
            "eye_open": [float(x) for x in eye_open],
            "blinks": [[a, b] for a, b in blinks],
            "identity": {
                "background": [int(c) for c in identity.colours[0]],
                "face": [int(c) for c in identity.colours[1]],
                "eye": [int(c) for c in identity.colours[2]],
                "mouth": [int(c) for c in identity.colours[3]],
                "face_center": [round(x, 6) for x in identity.face_center],
                "face_radii": [round(x, 6) for x in identity.face_radii],
                "f0": round(identity.f0, 4),
                "timbre": round(identity.timbre, 6),
            },
        },
    }
    return Clip(
        key=key if key is not None else f"synth-{seed:08d}",
        video=video,
        audio=audio.astype(np.float32),
        fps=spec.fps,
        sample_rate=sr,
        meta=meta,
    )


def _identity(rng: np.random.Generator) -> _Identity:
    """Colours far apart (the mouth is later found by its colour), face geometry and voice of one character."""
    colours = _distinct_colours(rng)
    return _Identity(
        colours=colours,
        face_center=(float(rng.uniform(*FACE_CENTER[0])), float(rng.uniform(*FACE_CENTER[1]))),
        face_radii=(float(rng.uniform(*FACE_RADII[0])), float(rng.uniform(*FACE_RADII[1]))),
        bob_amplitude=float(rng.uniform(*BOB_AMPLITUDE)),
        bob_period=float(rng.uniform(*BOB_PERIOD_SECONDS)),
        bob_phase=float(rng.uniform(0, 2 * np.pi)),
        f0=float(np.exp(rng.uniform(np.log(F0_HZ[0]), np.log(F0_HZ[1])))),
        timbre=float(rng.uniform(*TIMBRE)),
        vibrato_hz=float(rng.uniform(*VIBRATO_HZ)),
        vibrato_depth=float(rng.uniform(*VIBRATO_DEPTH)),
        vibrato_phase=float(rng.uniform(0, 2 * np.pi)),
        harmonic_phase_seed=int(rng.integers(2**63)),
    )


def _distinct_colours(rng: np.random.Generator) -> np.ndarray:
    """Background, face, eye, mouth colours (4, 3), pairwise far apart, with the mouth also far from every
    anti-aliased blend of the face with the background or the eyes, so a colour match finds only the mouth."""
    weights = np.linspace(0.0, 1.0, 21)[:, None]  # (21, 1) blend fractions
    for _ in range(10_000):
        c = rng.integers(0, 256, size=(4, 3)).astype(np.float64)  # (4, 3)
        pairwise = np.abs(c[:, None] - c[None]).sum(-1)[np.triu_indices(4, 1)]
        blends = np.concatenate([c[1] + weights * (c[k] - c[1]) for k in (0, 2)])  # (42, 3)
        if pairwise.min() >= MIN_COLOUR_DISTANCE and np.abs(blends - c[3]).sum(-1).min() >= MIN_COLOUR_DISTANCE:
            return c
    raise RuntimeError("could not draw distinct identity colours")  # practically unreachable (~40% of draws pass)


def _transcript(rng: np.random.Generator, num_samples: int, sample_rate: int) -> list[_Syllable]:
    """Vowel syllables separated by pauses, starting after a short pause; only syllables that end in the clip."""
    syllables: list[_Syllable] = []
    t = rng.uniform(*FIRST_PAUSE_SECONDS)
    while True:
        vowel = VOWELS[int(rng.integers(len(VOWELS)))]
        duration, gain, pause = rng.uniform(*SYLLABLE_SECONDS), rng.uniform(*SYLLABLE_GAIN), rng.uniform(*PAUSE_SECONDS)
        start, end = round(t * sample_rate), round((t + duration) * sample_rate)
        if end > num_samples:
            return syllables
        syllables.append(_Syllable(vowel=vowel, start=start, end=end, gain=float(gain)))
        t += duration + pause


def _blinks(rng: np.random.Generator, seconds: float) -> list[tuple[float, float]]:
    """Blink intervals (start, end) in seconds at random times; only blinks that end in the clip."""
    blinks: list[tuple[float, float]] = []
    t = rng.uniform(*FIRST_BLINK_SECONDS)
    while True:
        duration, gap = rng.uniform(*BLINK_SECONDS), rng.uniform(*BLINK_GAP_SECONDS)
        if t + duration > seconds:
            return blinks
        blinks.append((round(float(t), 6), round(float(t + duration), 6)))
        t += duration + gap


def _eye_open(blinks: list[tuple[float, float]], times: np.ndarray) -> np.ndarray:
    """Eye opening at ``times`` (N,): 1 outside blinks, a raised cosine that closes fully mid-blink."""
    opening = np.ones_like(times)
    for a, b in blinks:
        inside = (times > a) & (times < b)
        opening[inside] = 0.5 * (1 + np.cos(2 * np.pi * (times[inside] - a) / (b - a)))
    return opening


def _audio(
    identity: _Identity, syllables: list[_Syllable], num_samples: int, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Audio (S,), its amplitude envelope (S,) in 0..1 and the index of the syllable owning each sample (S,), -1
    in pauses. Each syllable's voiced signal is normalised to VOICE_RMS before its envelope, so loudness follows
    the envelope only and not the vowel."""
    t = np.arange(num_samples) / sample_rate  # (S,)
    vibrato = identity.vibrato_depth * np.sin(2 * np.pi * identity.vibrato_hz * t + identity.vibrato_phase)
    f_inst = identity.f0 * (1 + vibrato)  # (S,)
    phase = 2 * np.pi * np.cumsum(f_inst) / sample_rate  # (S,) phase of the fundamental
    max_harmonic = int(0.9 * sample_rate / 2 / (identity.f0 * (1 + identity.vibrato_depth)))
    k = np.arange(1, max_harmonic + 1, dtype=np.float64)  # (K,)
    harmonic_phase = np.random.default_rng(identity.harmonic_phase_seed).uniform(0, 2 * np.pi, k.size)  # (K,)
    envelope = np.zeros(num_samples)
    owner = np.full(num_samples, -1, dtype=np.int64)
    voiced = np.zeros(num_samples)
    for index, syllable in enumerate(syllables):
        f = k * identity.f0  # (K,)
        amplitude = 1 / k  # spectral tilt, -6 dB/octave
        for formant, bandwidth in zip(FORMANTS_HZ[syllable.vowel], FORMANT_BANDWIDTHS_HZ):
            fc = formant * identity.timbre  # second-order resonance, gain 1 at 0 Hz
            amplitude = amplitude * fc**2 / np.sqrt((fc**2 - f**2) ** 2 + (bandwidth * f) ** 2)
        keep = amplitude > 1e-4 * amplitude.max()
        span = slice(syllable.start, syllable.end)
        wave = amplitude[keep] @ np.sin(k[keep, None] * phase[None, span] + harmonic_phase[keep, None])  # (n,)
        voiced[span] = wave * (VOICE_RMS / np.sqrt(np.mean(wave**2)))
        envelope[span] = syllable.gain * _attack_release(syllable.end - syllable.start, sample_rate)
        owner[span] = index
    noise = rng.normal(0.0, NOISE_STD, num_samples)
    return np.clip(voiced * envelope + noise, -1.0, 1.0), envelope, owner


def _attack_release(n: int, sample_rate: int) -> np.ndarray:
    """Raised-cosine attack and release over ``n`` samples (n,), peak 1."""
    i = np.arange(n) + 0.5
    attack, release = ATTACK_SECONDS * sample_rate, RELEASE_SECONDS * sample_rate
    rise = 0.5 * (1 - np.cos(np.pi * np.clip(i / attack, 0, 1)))
    fall = 0.5 * (1 - np.cos(np.pi * np.clip((n - i) / release, 0, 1)))
    return rise * fall


def _mouth_vowels(owner: np.ndarray, envelope: np.ndarray, syllables: list[_Syllable], num_frames: int) -> list[str]:
    """Vowel that shapes the mouth in each frame: the syllable with the most envelope energy in the frame's
    audio (a frame that starts a syllable after its centre still shows that syllable's mouth shape)."""
    spf = owner.size // num_frames
    frame_of = np.repeat(np.arange(num_frames), spf)  # (S,)
    voiced = owner >= 0
    n = len(syllables) + 1
    energy = np.bincount(frame_of[voiced] * n + owner[voiced], weights=envelope[voiced] ** 2, minlength=num_frames * n)
    energy = energy.reshape(num_frames, n)  # (T, n)
    best = energy.argmax(axis=1)
    return [syllables[b].vowel if energy[t, b] > 0 else "" for t, b in enumerate(best)]


def _render(
    identity: _Identity, spec: AVSpec, mouth_open: np.ndarray, mouth_vowel: list[str], eye_open: np.ndarray
) -> np.ndarray:
    """Frames (T, H, W, 3) uint8: background, face, two eyes and the mouth as anti-aliased ellipses, layered by
    coverage, so sub-pixel motion and a slightly opening mouth stay visible at 32x32."""
    height, width = spec.height, spec.width
    num_frames = mouth_open.size
    times = (np.arange(num_frames) + 0.5) / spec.fps
    bob = identity.bob_amplitude * height * np.sin(2 * np.pi * times / identity.bob_period + identity.bob_phase)
    cx = np.full(num_frames, identity.face_center[0] * width)  # (T,) pixel units
    cy = identity.face_center[1] * height + bob  # (T,)
    rx, ry = identity.face_radii[0] * width, identity.face_radii[1] * height
    ones = np.ones(num_frames)

    eye_y, eye_rx, eye_ry = cy + EYE_OFFSET[1] * ry, EYE_RADII[0] * rx * ones, EYE_RADII[1] * ry * eye_open
    eyes = sum(_coverage(cx + side * EYE_OFFSET[0] * rx, eye_y, eye_rx, eye_ry, height, width) for side in (-1, 1))
    mouth_rx = np.array([MOUTH_WIDTH[v] for v in mouth_vowel]) * rx  # (T,)
    mouth = _coverage(cx, cy + MOUTH_OFFSET_Y * ry, mouth_rx, MOUTH_MAX_HEIGHT * ry * (LIPS + (1 - LIPS) * mouth_open), height, width)
    layers = (_coverage(cx, cy, rx * ones, ry * ones, height, width), np.minimum(eyes, 1.0), mouth)  # (T, H, W) each

    colours = identity.colours  # (4, 3) background, face, eye, mouth
    image = np.broadcast_to(colours[0], (num_frames, height, width, 3)).copy()  # (T, H, W, 3)
    for colour, coverage in zip(colours[1:], layers):
        image += coverage[..., None] * (colour - image)  # paint over what lies below
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _coverage(cx: np.ndarray, cy: np.ndarray, rx: np.ndarray, ry: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction (T, H, W) of each pixel inside the ellipse of centre (cx, cy) and radii (rx, ry), all (T,) in
    pixels; exact along x, SUPERSAMPLE rows per pixel along y. A radius of 0 draws nothing (a closed eye/mouth)."""
    s, num_frames = SUPERSAMPLE, cx.size
    y = (np.arange(height * s) + 0.5) / s  # (H*s,) sub-row centres
    safe_ry = np.where(ry > 0, ry, 1.0)
    inside = 1 - ((y[None, :] - cy[:, None]) / safe_ry[:, None]) ** 2  # (T, H*s)
    inside = np.where(ry[:, None] > 0, inside, -1.0)
    half = rx[:, None] * np.sqrt(np.clip(inside, 0.0, None))  # (T, H*s) half-width of the chord
    left, right = (cx[:, None] - half)[..., None], (cx[:, None] + half)[..., None]  # (T, H*s, 1)
    column = np.arange(width, dtype=np.float64)  # (W,) pixel j spans [j, j + 1)
    overlap = np.clip(np.minimum(right, column + 1) - np.maximum(left, column), 0.0, 1.0)  # (T, H*s, W)
    return overlap.reshape(num_frames, height, s, width).mean(axis=2)
