"""The bootstrap 95% interval of a Fréchet distance: over clips (not frames), reproducible, narrower with more clips."""

import pytest
import torch

from lightning_mf.metrics.frechet import FrechetDistance, frechet_ci95


def _clips(num: int, items: int, dim: int = 4, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num, items, dim, generator=gen, dtype=torch.float64) + shift  # (B, n, F)


def test_value_is_the_distance_of_all_features_whatever_the_grouping() -> None:
    real, fake = _clips(6, 5), _clips(8, 3, seed=1, shift=0.5)
    flat = FrechetDistance(num_features=4)
    flat.update(real.flatten(0, 1), real=True)
    flat.update(fake.flatten(0, 1), real=False)
    value, half = frechet_ci95(real, fake, bootstraps=0)
    assert value == pytest.approx(float(flat.compute()), rel=1e-12) and value > 0.2 and half == 0.0


def test_clips_are_the_unit_resampled() -> None:
    # Every clip holds the same 5 varied frames: resampling clips changes nothing, resampling frames would.
    same = _clips(1, 5).expand(8, 5, 4)
    _, half = frechet_ci95(same, same + 0.3, bootstraps=50)
    assert half == pytest.approx(0.0, abs=1e-9)
    _, half_varied = frechet_ci95(_clips(8, 5), _clips(8, 5, seed=1) + 0.3, bootstraps=50)
    assert half_varied > 0.05


def test_interval_is_reproducible_narrows_with_more_clips_and_leaves_the_rng_alone() -> None:
    torch.manual_seed(7)
    small = frechet_ci95(_clips(8, 4), _clips(8, 4, seed=1, shift=0.5), bootstraps=200)
    after = torch.rand(1)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(1), after)  # frechet_ci95 resamples on its own seed, the caller's RNG untouched
    assert frechet_ci95(_clips(8, 4), _clips(8, 4, seed=1, shift=0.5), bootstraps=200) == small
    large = frechet_ci95(_clips(128, 4), _clips(128, 4, seed=1, shift=0.5), bootstraps=200)
    assert large[1] < small[1] / 2  # about 1/sqrt(16) of it
    assert abs(large[0] - 4 * 0.25) < 3 * large[1]  # the true distance (a mean shift of 0.5 in 4 dims) lies inside


def test_ungrouped_features_are_refused() -> None:
    with pytest.raises(ValueError, match="grouped per clip"):
        frechet_ci95(torch.randn(10, 4), torch.randn(10, 4))


def test_each_resample_is_the_exact_gaussian_of_the_clips_it_drew() -> None:
    """The batched bootstrap (per-clip sums weighted by draw counts) equals refilling a metric with the drawn clips, and
    the route through the samples (fewer samples than features) gives the same distances as the covariances."""
    from lightning_mf.metrics.frechet import _centred_samples, _draw_counts, _frechet_of_samples, _resampled_gaussians, frechet_distance

    feats, other = _clips(5, 3, dim=8), _clips(4, 2, dim=8, seed=1, shift=0.4)
    counts = _draw_counts(5, 6, torch.Generator().manual_seed(3))
    mean, cov = _resampled_gaussians(feats, counts)
    draws = torch.randint(5, (6, 5), generator=torch.Generator().manual_seed(3))  # the draws it made
    for r in range(6):
        drawn = feats[draws[r]].flatten(0, 1)  # (5 * 3, 8): repeated clips repeated
        assert torch.allclose(mean[r], drawn.mean(0), atol=1e-12) and torch.allclose(cov[r], drawn.T.cov(), atol=1e-12)
    other_counts = _draw_counts(4, 6, torch.Generator().manual_seed(4))
    other_mean, other_cov = _resampled_gaussians(other, other_counts)
    batched = frechet_distance(mean, cov, other_mean, other_cov)
    one_by_one = torch.stack([frechet_distance(mean[r], cov[r], other_mean[r], other_cov[r]) for r in range(6)])
    assert batched.shape == (6,) and torch.allclose(batched, one_by_one, atol=1e-12) and batched.max() > 0.1
    from_samples = _frechet_of_samples(_centred_samples(feats, counts), _centred_samples(other, other_counts))
    assert torch.allclose(from_samples, batched, atol=1e-9)
