"""Scorer reuses the reference side's Fréchet features across the rows of one table, and only for the same clips."""

from __future__ import annotations

from helpers import synthetic_batch

from lightning_mf.batch import AVBatch
from lightning_mf.data.synthetic import PRESETS
from lightning_mf.metrics.scoring import Scorer

SPEC = PRESETS["tiny"].spec


def _clips(seeds: range) -> AVBatch:
    return synthetic_batch(seeds, 1.0)


def _distances(scores: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if k.startswith("fd_")}


def test_reference_features_are_reused_for_the_same_clips_and_recomputed_for_others() -> None:
    first, second, fake = _clips(range(4)), _clips(range(4, 8)), _clips(range(8, 12))
    media = {"video": fake.video, "audio": fake.audio}
    scorer = Scorer(SPEC, ("video", "audio"), vowel_classifier_clips=0, bootstraps=5)
    against_first = _distances(scorer.score(media, made_from=fake, reference=first))
    assert set(scorer._reference_features) == {"frames", "clips", "motion", "audio"}
    cached = {name: feats for name, (_, feats) in scorer._reference_features.items()}
    assert _distances(scorer.score(media, made_from=fake, reference=first)) == against_first  # the same table row
    assert all(scorer._reference_features[n][1] is f for n, f in cached.items())  # computed once
    against_second = _distances(scorer.score(media, made_from=fake, reference=second))
    fresh = Scorer(SPEC, ("video", "audio"), vowel_classifier_clips=0, bootstraps=5)
    assert against_second == _distances(fresh.score(media, made_from=fake, reference=second))  # not the first's
    assert all(against_second[k] != against_first[k] for k in ("fd_frames", "fd_clips", "fd_motion", "fd_audio"))
