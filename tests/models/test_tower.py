"""Tower options that change what its output means: the preconditioned velocity (``TowerConfig.skip_sigma``)."""

from __future__ import annotations

import pytest
import torch

from lightning_mf.models import Tower, TowerConfig

SIGMA = 0.6


def _tower(skip_sigma: float | None) -> Tower:
    return Tower(8, TowerConfig(dim=32, depth=1, heads=2, skip_sigma=skip_sigma))


def test_without_skip_the_velocity_is_the_network_output() -> None:
    x, out = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    assert torch.equal(_tower(None).velocity(x, torch.rand(2, 5), out), out)


def test_the_skip_passes_the_noise_through_at_pure_noise_and_the_clean_tokens_at_zero_noise() -> None:
    """``v = eps - x0``: at s = 1, ``x_s = eps`` so ``v = x_s + (-x0)`` and the network adds ``-x0`` scaled by the
    data's std; at s = 0, ``x_s = x0`` so ``v = -x_s + eps``, the network's unit-variance output."""
    tower, x, out = _tower(SIGMA), torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    at = lambda s: tower.velocity(x, torch.full((1, 3), s), out)  # noqa: E731
    assert torch.allclose(at(1.0), x + SIGMA * out, atol=1e-6)
    assert torch.allclose(at(0.0), -x + out, atol=1e-6)


@pytest.mark.parametrize("s", [0.05, 0.3, 0.7, 0.95])
def test_the_skip_is_the_best_linear_guess_and_leaves_a_unit_variance_target(s: float) -> None:
    """For x0 of std ``skip_sigma``, the skip alone is the least-squares linear prediction of v from x_s (the residual
    is uncorrelated with x_s), and the network's target ``(v - skip) / c_out`` has unit variance."""
    g = torch.Generator().manual_seed(0)
    x0, eps = SIGMA * torch.randn(1, 200_000, 1, generator=g), torch.randn(1, 200_000, 1, generator=g)
    x = (1 - s) * x0 + s * eps
    tower, level = _tower(SIGMA), torch.full((1, 200_000), s)
    skip = tower.velocity(x, level, torch.zeros_like(x))
    c_out = tower.velocity(x, level, torch.ones_like(x)) - skip
    target = (eps - x0 - skip) / c_out
    assert abs(float(torch.corrcoef(torch.stack([target.flatten(), x.flatten()]))[0, 1])) < 0.01
    assert float(target.std()) == pytest.approx(1.0, abs=0.01)


def test_a_non_positive_skip_sigma_is_refused() -> None:
    with pytest.raises(ValueError, match="skip_sigma must be > 0"):
        TowerConfig(skip_sigma=0.0)
