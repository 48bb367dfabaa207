"""LipSync mechanics on ground-truth embeddings, and the vowel classifier / error rate on synthetic speech."""

import numpy as np
import pytest
import torch
from helpers import delay_audio

from lightning_mf.data.synthetic import PRESETS, synthesize_clip
from lightning_mf.metrics.lipsync import LipSync, clip_scores, offset_distances
from lightning_mf.metrics.oracle import audio_energy
from lightning_mf.metrics.vowels import VowelErrorRate, _trained_vowel_classifier, train_vowel_classifier

SPEC = PRESETS["tiny"].spec
SPF = SPEC.samples_per_frame


def _window_embedding(series: torch.Tensor, half: int = 2) -> torch.Tensor:
    """(B, T) per-frame signal -> (B, T, 2*half+1) z-normalised windows (a stand-in for trained SyncNet towers)."""
    series = (series - series.mean(1, keepdim=True)) / (series.std(1, keepdim=True) + 1e-6)
    padded = torch.nn.functional.pad(series[:, None], (half, half), mode="replicate")[:, 0]
    return padded.unfold(1, 2 * half + 1, 1)


def _clips(seeds) -> tuple[torch.Tensor, torch.Tensor]:
    clips = [synthesize_clip(s, SPEC, 4.0) for s in seeds]
    mouth = torch.tensor(np.stack([c.meta["ground_truth"]["mouth_open"] for c in clips]), dtype=torch.float32)
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))
    return mouth, audio


def _lipsync(mouth: torch.Tensor, audio: torch.Tensor, max_offset: int = 8) -> dict[str, torch.Tensor]:
    metric = LipSync(max_offset=max_offset)
    metric.update_embeddings(_window_embedding(mouth), _window_embedding(audio_energy(audio, SPF)))
    return metric.compute()


def test_lipsync_offset_is_zero_on_real_pairs_and_follows_a_shift() -> None:
    mouth, audio = _clips(range(6))
    assert int(_lipsync(mouth, audio)["av_offset"]) == 0
    assert int(_lipsync(mouth, delay_audio(audio, 3 * SPF))["av_offset"]) == 3  # audio lagging the video: positive
    assert int(_lipsync(mouth, delay_audio(audio, -3 * SPF))["av_offset"]) == -3


def test_lipsync_confidence_is_higher_for_real_pairs_than_for_another_clips_audio() -> None:
    mouth, audio = _clips(range(6))
    real = _lipsync(mouth, audio)
    mismatched = _lipsync(mouth, audio.roll(1, dims=0))  # each face with the next clip's voice
    assert real["lse_c"] > 2 * mismatched["lse_c"]
    assert real["lse_d"] < mismatched["lse_d"]


def test_lipsync_accumulates_over_batches_like_one_batch() -> None:
    mouth, audio = _clips(range(4))
    v, a = _window_embedding(mouth), _window_embedding(audio_energy(audio, SPF))
    whole, parts = LipSync(max_offset=5), LipSync(max_offset=5)
    whole.update_embeddings(v, a)
    parts.update_embeddings(v[:1], a[:1])
    parts.update_embeddings(v[1:], a[1:])
    for key, value in whole.compute().items():
        assert torch.allclose(value.float(), parts.compute()[key].float(), atol=1e-6), key


def test_per_clip_scores_find_each_clips_own_shift_and_average_to_the_metric() -> None:
    """What SyncNetTraining.predict writes per window: each clip's offset, whatever the others' are."""
    mouth, audio = _clips(range(3))
    shifted = torch.stack([delay_audio(audio[i : i + 1], s * SPF)[0] for i, s in enumerate((0, 3, -2))])
    v, a = _window_embedding(mouth), _window_embedding(audio_energy(shifted, SPF))
    scores = clip_scores(offset_distances(v.double(), a.double(), 5))
    assert scores["av_offset"].tolist() == [0, 3, -2]
    assert (scores["lse_c"] > 0).all()
    metric = LipSync(max_offset=5)
    metric.update_embeddings(v, a)
    overall = metric.compute()
    for key in ("lse_d", "lse_c"):
        assert torch.allclose(scores[key].mean().float(), overall[key], atol=1e-6), key
        assert torch.allclose(1.96 * scores[key].std().float() / 3**0.5, overall[f"{key}_ci95"], atol=1e-6), key


def test_offset_distances_checks_its_input() -> None:
    with pytest.raises(ValueError, match="too short for max_offset=15"):
        offset_distances(torch.zeros(1, 10, 4), torch.zeros(1, 10, 4), 15)
    with pytest.raises(ValueError, match="must both be \\(B, T, E\\)"):
        offset_distances(torch.zeros(1, 10, 4), torch.zeros(1, 10, 3), 2)
    with pytest.raises(ValueError, match="without an embedder"):
        LipSync().update(torch.zeros(1, 4, 3, 8, 8), torch.zeros(1, 4000))


@pytest.fixture(scope="module")
def vowel_classifier():
    torch.manual_seed(0)
    return train_vowel_classifier(SPEC)


def test_vowel_classifier_hears_the_transcript_of_real_synthetic_audio(vowel_classifier) -> None:
    clips = [synthesize_clip(seed, SPEC, 2.0) for seed in range(500, 540)]  # seeds it was not trained on
    metric = VowelErrorRate(vowel_classifier)
    metric.update(torch.from_numpy(np.stack([c.audio for c in clips])), [c.meta["transcript"] for c in clips])
    assert int(metric.total) > 150
    scores = metric.compute()
    assert scores["vowel_error_rate"] <= 0.05 and scores["vowel_error_rate_ci95"] < 0.05  # accuracy >= 95 %


def test_vowel_error_rate_is_high_for_the_wrong_transcript_or_noise(vowel_classifier) -> None:
    clips = [synthesize_clip(seed, SPEC, 2.0) for seed in range(600, 620)]
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))
    wrong = VowelErrorRate(vowel_classifier)
    wrong.update(audio, [c.meta["transcript"] for c in clips[1:] + clips[:1]])  # another clip's words
    noise = VowelErrorRate(vowel_classifier)
    noise.update(torch.randn_like(audio) * 0.1, [c.meta["transcript"] for c in clips])
    wrong_scores = wrong.compute()
    assert wrong_scores["vowel_error_rate"] > 0.5 and noise.compute()["vowel_error_rate"] > 0.5
    assert 0.02 < wrong_scores["vowel_error_rate_ci95"] < 0.3  # 20 clips: an interval neither empty nor the whole range


def test_vowel_classifier_training_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    _trained_vowel_classifier.cache_clear()  # train for real each time
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = train_vowel_classifier(SPEC, num_clips=4, steps=3)
    assert torch.equal(torch.get_rng_state(), state)
    _trained_vowel_classifier.cache_clear()
    torch.manual_seed(999)
    b = train_vowel_classifier(SPEC, num_clips=4, steps=3)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_each_caller_gets_its_own_copy_of_the_process_wide_classifier() -> None:
    a = train_vowel_classifier(SPEC, num_clips=4, steps=3)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)  # a caller moving or changing its copy (e.g. .to(device)) leaves the next caller's alone
    b = train_vowel_classifier(SPEC, num_clips=4, steps=3)
    assert b is not a and _trained_vowel_classifier.cache_info().hits >= 1
    assert all(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
