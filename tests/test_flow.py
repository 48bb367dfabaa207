"""METHOD §1 notation: interpolation, velocity, timestep shift, sampling grids and training noise levels."""

from __future__ import annotations

import pytest
import torch

from lightning_mf.flow import grid, interpolate, sample_noise_levels, shift, velocity_target, x0_from_velocity


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_x0_is_recovered_from_x_s_and_the_true_velocity() -> None:
    x0, eps = _randn(4, 6, 3, seed=0), _randn(4, 6, 3, seed=1)
    s = torch.rand(4, 6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))  # a level per token
    v = velocity_target(x0, eps)
    for level in (s, 0.3, 1.0):
        torch.testing.assert_close(x0_from_velocity(interpolate(x0, eps, level), level, v), x0, rtol=0, atol=1e-14)
    assert torch.equal(interpolate(x0, eps, 0.0), x0) and torch.equal(interpolate(x0, eps, 1.0), eps)
    # v is the time derivative of the straight path: x_s - x_{s-d} = d * v for any d
    torch.testing.assert_close(interpolate(x0, eps, 0.7) - interpolate(x0, eps, 0.2), 0.5 * v, rtol=0, atol=1e-14)


def test_shift_keeps_the_ends_is_monotone_and_one_is_the_identity() -> None:
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    for k in (0.5, 1.0, 3.0, 5.0):
        out = shift(s, k)
        assert out[0] == 0.0 and out[-1] == pytest.approx(1.0, abs=1e-15)
        assert bool((out[1:] > out[:-1]).all())
        assert [shift(float(a), k) for a in s] == pytest.approx(out.tolist(), abs=1e-15)  # floats agree with tensors
    assert torch.equal(shift(s, 1.0), s)
    inner = s[1:-1]
    assert bool((shift(inner, 3.0) > inner).all()) and bool((shift(inner, 0.5) < inner).all())  # k > 1: toward noise
    assert shift(0.5, 3.0) == pytest.approx(0.75) and isinstance(shift(0.5, 3.0), float)


@pytest.mark.parametrize("k", [0.0, -1.0, float("nan")])
def test_shift_rejects_a_non_positive_factor(k: float) -> None:
    with pytest.raises(ValueError, match=r"shift factor k must be > 0 .* got k="):
        shift(0.5, k)
    with pytest.raises(ValueError, match="shift factor k must be > 0"):
        grid(4, k, few=True)


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 50])
@pytest.mark.parametrize("k", [0.3, 1.0, 3.0])
def test_grid_walks_from_noise_to_data_and_only_few_mode_tells_the_jump(steps: int, k: float) -> None:
    expected = shift(torch.linspace(1, 0, steps + 1, dtype=torch.float64), k).tolist()
    for few in (False, True):
        g = grid(steps, k, few=few)
        assert len(g) == steps and g[0][0] == 1.0
        assert g[-1][0] - g[-1][1] == 0.0  # ends exactly on data
        assert sum(step for _, step, _ in g) == pytest.approx(1.0, abs=1e-14)
        assert [s for s, _, _ in g] + [0.0] == pytest.approx(expected, abs=1e-15)
        assert all(step > 0 for _, step, _ in g)
        assert all(d == (step if few else 0.0) for _, step, d in g)
        assert [b[0] for b in g[1:]] == pytest.approx([a[0] - a[1] for a in g[:-1]], abs=1e-15)  # contiguous steps


@pytest.mark.parametrize("steps", [2, 4, 50])
@pytest.mark.parametrize("jump_from", [0.3, 0.5])
def test_a_multi_grid_with_jump_from_squeezes_its_steps_above_the_level_and_jumps_to_data(steps: int, jump_from: float) -> None:
    g = grid(steps, 3.0, few=False, jump_from=jump_from)
    above = shift(torch.linspace(1, 0, steps, dtype=torch.float64), 3.0)  # steps - 1 steps on the usual spacing
    assert len(g) == steps and g[0][0] == 1.0 and all(d == 0.0 for _, _, d in g)
    assert [s for s, _, _ in g] == pytest.approx((jump_from + (1 - jump_from) * above).tolist(), abs=1e-15)
    assert g[-1] == (jump_from, jump_from, 0.0)  # one step from the level straight to data
    assert all(s > jump_from for s, _, _ in g[:-1])
    assert sum(step for _, step, _ in g) == pytest.approx(1.0, abs=1e-14)
    assert [b[0] for b in g[1:]] == pytest.approx([a[0] - a[1] for a in g[:-1]], abs=1e-15)
    assert grid(1, 3.0, few=False, jump_from=jump_from) == grid(1, 3.0, few=False)  # one step is already a jump
    assert grid(steps, 3.0, few=False, jump_from=0.0) == grid(steps, 3.0, few=False)


@pytest.mark.parametrize(("jump_from", "few", "message"), [
    (1.0, False, r"jump_from is a noise level in \[0, 1\) .*got jump_from=1.0"),
    (-0.1, False, r"jump_from is a noise level in \[0, 1\) .*got jump_from=-0.1"),
    (0.3, True, r"jump_from=0.3 is for Multi mode: every Few-mode step is already a jump"),
])
def test_grid_rejects_a_jump_outside_the_levels_or_in_few_mode(jump_from: float, few: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grid(8, 3.0, few=few, jump_from=jump_from)


def test_grid_shift_spends_small_steps_near_noise() -> None:
    steps = [step for _, step, _ in grid(8, 3.0, few=True)]
    assert steps[0] < steps[-1] and steps == sorted(steps)
    assert [step for _, step, _ in grid(8, 1.0, few=True)] == pytest.approx([1 / 8] * 8, abs=1e-15)


@pytest.mark.parametrize("steps", [0, -2, 2.5, True])
def test_grid_rejects_a_bad_number_of_steps(steps: object) -> None:
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1 .* got steps="):
        grid(steps, few=False)  # type: ignore[arg-type]


def test_noise_levels_are_bounded_shaped_and_seeded() -> None:
    seeded = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731
    for distribution in ("uniform", "logit_normal"):
        draw = lambda seed=0: sample_noise_levels(  # noqa: E731
            (64, 5), generator=seeded(seed), distribution=distribution, shift=5.0, eps=0.01
        )
        a = draw()
        assert a.shape == (64, 5) and a.dtype == torch.float32
        assert a.min() >= 0.01 and a.max() <= 0.99 and a.max() == 0.99  # shift 5 pushes some levels into the clamp
        assert torch.equal(a, draw()) and not torch.equal(a, draw(1))


def test_noise_level_distributions_and_shift_moves_them_toward_noise() -> None:
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    n = 20_000  # standard error of a mean of values in [0, 1]: <= 0.5 / sqrt(n) = 0.0035; tolerances are ~5 of them
    logit = sample_noise_levels((n,), generator=seeded())
    assert abs(logit.mean().item() - 0.5) < 0.02  # logit-normal(0, 1) is symmetric about 1/2
    assert logit.std().item() < (1 / 12) ** 0.5 - 0.05  # and more concentrated than uniform (std 0.21 vs 0.29)
    uniform = sample_noise_levels((n,), generator=seeded(), distribution="uniform")
    assert abs(uniform.mean().item() - 0.5) < 0.02 and abs(uniform.std().item() - (1 / 12) ** 0.5) < 0.02
    shifted = sample_noise_levels((n,), generator=seeded(), shift=3.0)
    assert bool((shifted >= logit).all())  # same draws, each moved up by the shift
    assert shifted.mean() > logit.mean() + 0.1
    moved = sample_noise_levels((n,), generator=seeded(), loc=1.0)
    assert moved.mean() > logit.mean() + 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "beta"}, r"distribution must be 'uniform' or 'logit_normal', got distribution='beta'"),
        ({"eps": 0.5}, r"eps must be in \[0, 0.5\) .* got eps=0.5"),
        ({"scale": 0.0}, r"scale \(the std of the logit\) must be > 0, got scale=0.0"),
        ({"shift": -1.0}, r"shift factor k must be > 0"),
    ],
)
def test_noise_levels_reject_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_noise_levels((3,), **kwargs)  # type: ignore[arg-type]


def test_grid_is_unshifted_by_default_and_noise_levels_may_reach_the_ends() -> None:
    assert [s for s, _, _ in grid(4, few=False)] == [1.0, 0.75, 0.5, 0.25]  # shift 1: linspace
    levels = sample_noise_levels((1000,), generator=torch.Generator().manual_seed(0), distribution="uniform", eps=0.0)
    assert levels.min() < 0.01 and levels.max() > 0.99  # eps = 0 is allowed: no clamp


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal"])
def test_noise_levels_are_drawn_on_the_device_asked_for(distribution: str) -> None:
    assert sample_noise_levels((2, 3), device="meta", distribution=distribution).device.type == "meta"  # type: ignore[arg-type]
