"""ShortCut targets, their (s, d) pairs and the DMD gradient, against closed forms and direct computation.

The closed-form flow is the Gaussian of ``tests/sampling/test_samplers.py`` written for per-sample tensors:
data ``N(mu, sigma^2)``, noise quantile ``z`` kept along the path, so both the instantaneous velocity and the exact
average velocity over ``[s - d, s]`` are known.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_mf.flow import AV, Velocity, grid
from lightning_mf.objectives.self_distillation import dmd_loss, shortcut_pairs, shortcut_target

MU, SIGMA = 1.5, 0.4


def _b(t: Tensor) -> Tensor:
    return t.view(-1, 1, 1)


def _std(s: Tensor) -> Tensor:
    return ((1 - s) ** 2 * SIGMA**2 + s**2).sqrt()


def _z(x: Tensor, s: Tensor) -> Tensor:
    return (x - (1 - _b(s)) * MU) / _std(_b(s))


def average_velocity(x: AV, s: Tensor | float, d: Tensor | float) -> AV:
    """The exact chord (x_s - x_{s-d}) / d of the probability-flow path through each x."""
    s, d = torch.as_tensor(s, dtype=torch.float64).expand(4), torch.as_tensor(d, dtype=torch.float64).expand(4)
    out = {}
    for m, xm in x.items():
        end = (1 - _b(s - d)) * MU + _std(_b(s - d)) * _z(xm, s)
        out[m] = (xm - end) / _b(d)
    return out


def instantaneous_velocity(x: AV, s: Tensor | float, d: Tensor | float) -> AV:
    s = torch.as_tensor(s, dtype=torch.float64).expand(4)
    return {m: -MU + _b((s - (1 - s) * SIGMA**2) / _std(s)) * _z(xm, s) for m, xm in x.items()}


def _x(seed: int = 0) -> AV:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(4, 5, 3, generator=g, dtype=torch.float64), "audio": torch.randn(4, 2, 1, generator=g, dtype=torch.float64)}


def flow(x: AV, s: Tensor | float, d: Tensor | float) -> AV:
    """The closed-form model: the exact chord for ``d > 0``, the instantaneous velocity (Multi mode) at ``d = 0``."""
    d = torch.as_tensor(d, dtype=torch.float64).expand(4)
    chord, multi = average_velocity(x, s, torch.where(d > 0, d, 1.0)), instantaneous_velocity(x, s, 0.0)
    return {m: torch.where(_b(d) > 0, chord[m], multi[m]) for m in x}


def _assert_two_half_jumps(model: Velocity, x: AV, s: Tensor, d: Tensor, target: AV, i: int) -> None:
    """Row ``i`` of ``target`` is the mean of the model's own two half jumps from ``x[i]`` (direct computation)."""
    xi = {m: v[i : i + 1].expand(4, -1, -1) for m, v in x.items()}
    h = float(d[i]) / 2
    u1 = model(xi, float(s[i]), h)
    u2 = model({m: xi[m] - h * u1[m] for m in xi}, float(s[i]) - h, h)
    for m in x:
        torch.testing.assert_close(target[m][i], ((u1[m] + u2[m]) / 2)[0], rtol=0, atol=1e-12)


def test_the_target_of_a_true_average_velocity_is_itself_and_the_base_is_the_multi_velocity() -> None:
    x = _x()
    s = torch.tensor([1.0, 0.8, 0.5, 0.3], dtype=torch.float64)
    d = torch.tensor([1.0, 0.4, 0.25, 0.01], dtype=torch.float64)
    base = torch.tensor([False, False, False, True])
    target = shortcut_target(flow, x, s, d, base)
    exact, multi = average_velocity(x, s, d), instantaneous_velocity(x, s, 0.0)
    for m in x:  # two exact half chords average to the whole chord
        torch.testing.assert_close(target[m][:3], exact[m][:3], rtol=0, atol=1e-10)
        torch.testing.assert_close(target[m][3], multi[m][3], rtol=0, atol=0)
    assert not torch.allclose(exact["video"][:3], multi["video"][:3], atol=1e-2)  # the jumps are not the Multi velocity


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_the_target_is_the_mean_of_two_half_jumps_of_the_model_and_cfg_multi_at_the_smallest_step(cfg: float) -> None:
    """A model that is not self-consistent: the target must be built from its own half jumps, and the base row from
    its Multi velocity guided at ``cfg`` (direct computation)."""
    x = _x(1)
    w = {"video": 0.7, "audio": -0.3}
    calls = []

    def model(x: AV, s: Tensor | float, d: Tensor | float) -> AV:
        calls.append("model")
        s, d = torch.as_tensor(s, dtype=torch.float64).expand(4), torch.as_tensor(d, dtype=torch.float64).expand(4)
        return {m: w[m] * xm + _b(s) ** 2 - 3 * _b(d) for m, xm in x.items()}

    def uncond(x: AV, s: Tensor, d: float) -> AV:
        calls.append(("uncond", d))
        return {m: xm * 0 + 42.0 for m, xm in x.items()}

    s = torch.tensor([1.0, 0.9, 0.6, 0.2], dtype=torch.float64)
    d = torch.tensor([0.5, 0.3, 0.6, 0.02], dtype=torch.float64)
    base = torch.tensor([False, False, False, True])
    target = shortcut_target(model, x, s, d, base, uncond, cfg)
    # the first half jumps and the base row's Multi velocity in one call, the second half jumps in another
    assert calls == ["model", "model"] + ([("uncond", 0.0)] if cfg != 1 else [])
    for i in range(3):
        _assert_two_half_jumps(model, x, s, d, target, i)
    multi = model(x, s, 0.0)  # the teacher is Multi mode (d = 0)
    for m in x:
        torch.testing.assert_close(target[m][3], 42.0 + cfg * (multi[m][3] - 42.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_a_separate_teacher_gives_the_base_rows_and_the_model_its_own_half_jumps(cfg: float) -> None:
    """``multi`` (an EMA or a frozen copy) answers the base rows at d = 0, guided by its own unconditional velocity;
    the half jumps stay the trained model's, as ShortCut's recursion needs."""
    x = _x(2)
    calls = []

    def model(x: AV, s: Tensor | float, d: Tensor | float) -> AV:
        calls.append("model")
        s, d = torch.as_tensor(s, dtype=torch.float64).expand(4), torch.as_tensor(d, dtype=torch.float64).expand(4)
        return {m: 0.5 * xm + _b(s) - 2 * _b(d) for m, xm in x.items()}

    def teacher(x: AV, s: Tensor | float, d: Tensor | float) -> AV:
        calls.append("teacher")
        assert bool((torch.as_tensor(d) == 0).all())  # the teacher is asked for Multi mode only
        return {m: -1.5 * xm + 0.25 for m, xm in x.items()}

    def uncond(x: AV, s: Tensor, d: float) -> AV:
        calls.append("uncond")
        return {m: xm * 0 - 7.0 for m, xm in x.items()}

    s = torch.tensor([1.0, 0.2, 0.7, 0.1], dtype=torch.float64)
    d = torch.tensor([0.5, 0.02, 0.4, 0.02], dtype=torch.float64)
    base = torch.tensor([False, True, False, True])
    target = shortcut_target(model, x, s, d, base, uncond, cfg, multi=teacher)
    assert sorted(calls) == sorted(["model", "model", "teacher"] + (["uncond"] if cfg != 1 else []))
    expected_multi = {m: -7.0 + cfg * (-1.5 * xm + 0.25 + 7.0) for m, xm in x.items()}
    for i in range(4):
        if base[i]:
            for m in x:
                torch.testing.assert_close(target[m][i], expected_multi[m][i], rtol=0, atol=1e-12)
            continue
        _assert_two_half_jumps(model, x, s, d, target, i)
    calls.clear()
    only_base = shortcut_target(model, x, s, d, torch.ones(4, dtype=torch.bool), None, 1.0, multi=teacher)
    assert calls == ["teacher"]  # no half jump to take: the model is not called
    for m in x:
        torch.testing.assert_close(only_base[m], -1.5 * x[m] + 0.25, rtol=0, atol=0)


def test_only_the_branches_in_use_are_evaluated() -> None:
    x, s, d = _x(), torch.full((4,), 0.5, dtype=torch.float64), torch.full((4,), 0.25, dtype=torch.float64)
    calls = []

    def counted(x: AV, s: Tensor | float, d: Tensor | float) -> AV:
        calls.append(d)
        return flow(x, s, d)

    def forbidden(*args):
        raise AssertionError("called")

    shortcut_target(counted, x, s, d, torch.zeros(4, dtype=torch.bool), forbidden, 3.0)  # no base row: no guidance
    assert len(calls) == 2
    calls.clear()
    shortcut_target(counted, x, s, d, torch.ones(4, dtype=torch.bool), forbidden, 1.0)  # unguided Multi: one call
    assert len(calls) == 1 and bool((calls[0] == 0).all())
    with pytest.raises(ValueError, match="cfg=3 needs the unconditional velocity"):
        shortcut_target(counted, x, s, d, torch.ones(4, dtype=torch.bool), None, 3.0)


@pytest.mark.parametrize("min_step", [1 / 8, 1 / 32])
def test_shortcut_pairs_cover_every_inference_jump_and_the_half_jumps_below_it(min_step: float) -> None:
    steps, shift = (1, 2, 4, 8), 3.0
    pairs = shortcut_pairs(steps, shift, min_step)
    s, d, base, weight = pairs.unbind(1)
    assert weight.sum().item() == pytest.approx(1.0)
    assert bool((base.bool() == (d <= min_step)).all()) and bool((d[~base.bool()] > min_step).all())
    assert bool((s - d >= -1e-12).all()) and bool((s <= 1).all())
    present = {(round(a, 9), round(b, 9)) for a, b in zip(s.tolist(), d.tolist())}
    for n in steps:
        for level, _, jump in grid(n, shift, few=True):
            assert (round(level, 9), round(jump, 9)) in present  # the pairs inference uses
    for a, b, is_base in zip(s.tolist(), d.tolist(), base.tolist()):
        if not is_base:  # the two half jumps a target queries are trained too
            assert (round(a, 9), round(b / 2, 9)) in present and (round(a - b / 2, 9), round(b / 2, 9)) in present
    mass = {n: 0.0 for n in steps}  # each grid gets the same mass
    for n in steps:
        for level, _, jump in grid(n, shift, few=True):
            inside = (s <= level + 1e-12) & (s - d >= level - jump - 1e-12) & (d <= jump + 1e-12)
            mass[n] += weight[inside].sum().item()
    assert max(mass.values()) >= min(mass.values()) > 0
    with pytest.raises(ValueError, match="min_step must be > 0"):
        shortcut_pairs(steps, shift, 0.0)


def test_dmd_gradient_is_the_normalised_score_difference() -> None:
    g = torch.Generator().manual_seed(0)
    sample = {"video": torch.randn(3, 4, 2, generator=g, requires_grad=True)}
    real, fake = {"video": torch.randn(3, 4, 2, generator=g)}, {"video": torch.randn(3, 4, 2, generator=g)}
    loss = dmd_loss(sample, real, fake)["video"]
    loss.backward()
    x = sample["video"].detach()
    scale = (x - real["video"]).abs().mean(dim=(1, 2), keepdim=True)
    expected = (fake["video"] - real["video"]) / scale / x.numel()
    torch.testing.assert_close(sample["video"].grad, expected)
    same = dmd_loss({"video": x.clone().requires_grad_()}, real, real)["video"]
    assert same.item() == 0.0  # no push when the fake score agrees with the real one
