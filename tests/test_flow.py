import pytest
import torch

from lightning_mf.flow import grid, sample_noise_levels, shift


def test_shift_keeps_the_endpoints_is_monotone_and_one_is_identity() -> None:
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    for k in (0.5, 1.0, 3.0, 5.0):
        out = shift(s, k)
        assert out[0] == 0 and out[-1] == 1 and bool((out[1:] > out[:-1]).all())
    assert torch.equal(shift(s, 1.0), s)
    assert shift(0.5, 3.0) == pytest.approx(0.75) and float(shift(torch.tensor(0.5), 3.0)) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shift must be positive"):
        shift(s, 0.0)


@pytest.mark.parametrize("steps", [1, 4, 8, 50])
def test_grid_walks_from_noise_to_data(steps: int) -> None:
    for few in (False, True):
        g = grid(steps, 3.0, few=few)
        assert len(g) == steps and g[0][0] == 1.0
        assert sum(step for _, step, _ in g) == pytest.approx(1.0, abs=1e-12)
        assert g[-1][0] - g[-1][1] == 0.0  # ends exactly at data
        assert all(d == (step if few else 0.0) for _, step, d in g)
    if steps > 1:
        g = grid(steps, 3.0, few=True)
        assert g[0][1] < g[-1][1]  # shift > 1 spends small steps near noise


def test_grid_rejects_zero_steps() -> None:
    with pytest.raises(ValueError, match="steps >= 1"):
        grid(0, few=False)


def test_noise_levels_are_bounded_seeded_and_shifted() -> None:
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = sample_noise_levels((4000,), generator=g())
    assert a.min() >= 1e-3 and a.max() <= 1 - 1e-3
    assert torch.equal(a, sample_noise_levels((4000,), generator=g()))
    assert abs(a.mean().item() - 0.5) < 0.02  # logit-normal(0, 1) is symmetric
    assert sample_noise_levels((4000,), generator=g(), shift_k=3.0).mean() > a.mean() + 0.1
    u = sample_noise_levels((4000,), generator=g(), distribution="uniform")
    assert abs(u.mean().item() - 0.5) < 0.02 and abs(u.std().item() - (1 / 12) ** 0.5) < 0.02
    with pytest.raises(ValueError, match="distribution"):
        sample_noise_levels((3,), distribution="beta")  # type: ignore[arg-type]
