"""Teacher-forcing flow matching by value: a recording stub network with a known output shows what the objective
feeds the network (layout, levels, d) and that each error is exactly ``|u - (eps - x0)|^2``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_mf.batch import Cond
from lightning_mf.flow import sample_noise_levels
from lightning_mf.models.transformer import Tokens
from lightning_mf.objectives.flow_matching import NoiseSchedule, motion_weights, teacher_forcing_flow_matching
from lightning_mf.sequence import AVSequencer
from lightning_mf.spec import AVSpec

SEQ = AVSequencer(AVSpec(), ("video", "audio"))
CHUNKS = 3


class AffineStub(nn.Module):
    """Velocity ``0.5 * x + 0.25`` of every token; records what each call was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict[str, Tokens], Tensor | float]] = []
        self.options: list[dict[str, object]] = []  # the keyword arguments of each call (cond, window)

    def forward(self, tokens: dict[str, Tokens], d: Tensor | float = 0.0, **options: object) -> dict[str, Tensor]:
        self.calls.append((tokens, d))
        self.options.append(options)
        return {m: 0.5 * t.x + 0.25 for m, t in tokens.items()}


def _data(seed: int = 0) -> tuple[dict[str, Tensor], dict[str, Tokens]]:
    g = torch.Generator().manual_seed(seed)
    x0 = {m: torch.randn(2, CHUNKS * SEQ.tokens_per_chunk(m), SEQ.token_dim(m), generator=g) for m in SEQ.modalities}
    prefix = SEQ.prefix(torch.randint(0, 255, (2, 3, 32, 32), generator=g, dtype=torch.uint8))
    return x0, prefix


def test_each_error_is_the_distance_to_the_velocity_eps_minus_x0_of_its_own_noised_chunk() -> None:
    x0, prefix = _data()
    net = AffineStub()
    torch.manual_seed(0)
    result = teacher_forcing_flow_matching(net, SEQ, x0, prefix, None, NoiseSchedule(distribution="uniform"))
    (tokens, d), = net.calls
    assert float(d) == 0.0  # flow matching trains Multi mode
    for m, x in x0.items():
        n, t = x.shape[1], tokens[m]
        noisy, s = t.x[:, -n:], t.s[:, -n:]  # [prefix ; clean history ; noisy chunks]: the noisy part is last
        assert torch.equal(s, result.levels[m]) and bool((s > 0).all() and (s < 1).all())
        per_chunk = s.unflatten(1, (CHUNKS, -1))
        assert torch.equal(per_chunk, per_chunk[..., :1].expand_as(per_chunk))  # one level per chunk (Diffusion Forcing)
        assert not t.layout.clean[-n:].any() and t.layout.clean[:-n].all()
        history = t.x[:, -2 * n : -n]
        assert torch.equal(history, x) and not t.s[:, -2 * n : -n].any()  # teacher forcing: the clean real chunks
        eps = (noisy - (1 - s[..., None]) * x) / s[..., None]  # the noise that was drawn, from x_s = (1 - s) x0 + s eps
        assert 0.9 < eps.std() < 1.1  # it is a standard normal draw, so x_s really was built from x0 and eps
        expected = (0.5 * noisy + 0.25 - (eps - x)).pow(2).mean(-1)
        torch.testing.assert_close(result.errors[m], expected, rtol=1e-4, atol=1e-5)
    weighted = result.loss({"audio": 0.3})
    torch.testing.assert_close(weighted, result.errors["video"].mean() + 0.3 * result.errors["audio"].mean())


def test_motion_weights_favour_the_positions_that_change_with_mean_one_and_the_same_weight_in_every_chunk() -> None:
    n, chunks = 4, 3
    x0 = torch.zeros(2, chunks * n, 5)
    x0[0, 1::n] = torch.tensor([0.0, 2.0, -2.0])[:, None]  # clip 0: only position 1 moves (variance 4)
    x0[0, 2::n] = torch.tensor([1.0, 0.0, 1.0])[:, None]  # and position 2 a little (variance 1/3)
    x0[1] = 7.0  # clip 1: nothing moves
    w = motion_weights(x0, n, strength=2.0)
    change = torch.tensor([0.0, 4.0, 1 / 3, 0.0])
    expected = (1 + 2.0 * change / change.mean()) / 3.0
    torch.testing.assert_close(w[0], expected.repeat(chunks))
    torch.testing.assert_close(w[0].mean(), torch.tensor(1.0))
    torch.testing.assert_close(w[1], torch.ones(chunks * n))  # a still clip keeps the plain mean
    assert torch.equal(motion_weights(x0, n, 0.0), torch.ones(2, chunks * n))
    assert torch.equal(motion_weights(x0[:, :n], n, 2.0), torch.ones(2, n))  # one chunk: no change to measure
    with pytest.raises(ValueError, match="strength must be >= 0"):
        motion_weights(x0, n, -1.0)


def test_the_loss_weights_each_token_error_by_its_motion_weight_and_logs_the_plain_errors() -> None:
    x0, prefix = _data()
    x0["video"][:, 5 :: SEQ.tokens_per_chunk("video")] *= 4  # one video position changes much more than the rest
    torch.manual_seed(0)
    plain = teacher_forcing_flow_matching(AffineStub(), SEQ, x0, prefix, None, NoiseSchedule())
    torch.manual_seed(0)
    weighted = teacher_forcing_flow_matching(AffineStub(), SEQ, x0, prefix, None, NoiseSchedule(), motion_weight={"video": 3.0})
    for m in x0:
        assert torch.equal(weighted.errors[m], plain.errors[m])  # the logged errors stay comparable across runs
    w = motion_weights(x0["video"], SEQ.tokens_per_chunk("video"), 3.0)
    assert set(weighted.token_weights) == {"video"}
    torch.testing.assert_close(
        weighted.loss({"audio": 0.3}), (w * plain.errors["video"]).mean() + 0.3 * plain.errors["audio"].mean()
    )
    assert float(weighted.token_weights["video"][:, 5].mean()) > 2.0  # the moving position dominates


def test_context_noise_noises_the_history_to_a_level_below_its_bound() -> None:
    x0, prefix = _data(1)
    net = AffineStub()
    teacher_forcing_flow_matching(net, SEQ, x0, prefix, None, NoiseSchedule(context_noise=0.2))
    (tokens, _), = net.calls
    for m, x in x0.items():
        n, t = x.shape[1], tokens[m]
        level = t.s[:, -2 * n : -n]
        assert bool((level > 0).all() and (level <= 0.2).all())
        assert (t.x[:, -2 * n : -n] - x).abs().mean() > 0.01  # the history the network saw is noised


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_the_context_noise_bound_is_a_level_below_one(bad: float) -> None:
    assert NoiseSchedule(context_noise=0.0).context_noise == 0.0 and NoiseSchedule(context_noise=0.99).context_noise == 0.99
    with pytest.raises(ValueError, match=rf"NoiseSchedule.context_noise must be in \[0, 1\), got {bad}"):
        NoiseSchedule(context_noise=bad)


def test_errors_are_bucketed_by_noise_level_with_the_last_bucket_closed() -> None:
    from lightning_mf.objectives.flow_matching import FlowMatchingResult

    levels = torch.tensor([[0.0, 0.25, 0.3, 0.5, 0.74, 0.75, 1.0]])
    errors = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]])
    result = FlowMatchingResult(errors={"audio": errors}, levels={"audio": levels})
    buckets = {k: float(v) for k, v in result.by_bucket().items()}
    assert buckets == {"audio_s0.00-0.25": 1.0, "audio_s0.25-0.50": 3.0, "audio_s0.50-0.75": 12.0, "audio_s0.75-1.00": 48.0}
    assert set(result.by_bucket((0.0, 0.5, 1.0))) == {"audio_s0.00-0.50", "audio_s0.50-1.00"}
    assert float(result.loss({"audio": 0.5})) == 0.5 * float(errors.mean())
    empty = FlowMatchingResult(errors={"audio": errors[:, :1]}, levels={"audio": levels[:, :1]})
    assert list(empty.by_bucket()) == ["audio_s0.00-0.25"]  # buckets without a level are skipped


def test_a_given_history_is_seen_as_is_with_its_levels_window_and_transcript() -> None:
    """Mutual Forcing's case: the history is a rollout already written at its context level, so it reaches the
    network unchanged (not replaced by the real chunks, not noised again by ``context_noise``), and the window and
    transcript reach the network too."""
    x0, prefix = _data(2)
    g = torch.Generator().manual_seed(3)
    history = {m: torch.randn(x.shape, generator=g) for m, x in x0.items()}
    levels = {m: torch.full(x.shape[:2], 0.3) for m, x in x0.items()}
    cond = Cond.from_transcripts([[{"token": "a", "start": 0.0, "end": 0.2}], []], 8)
    net = AffineStub()
    teacher_forcing_flow_matching(
        net, SEQ, x0, prefix, cond, NoiseSchedule(context_noise=0.5), history=history, window=2, history_levels=levels
    )
    (tokens, _), = net.calls
    assert net.options[0]["window"] == 2 and net.options[0]["cond"] is cond
    for m, x in x0.items():
        n, t = x.shape[1], tokens[m]
        assert torch.equal(t.x[:, -2 * n : -n], history[m]) and torch.equal(t.s[:, -2 * n : -n], levels[m])
        assert t.layout.clean[-2 * n : -n].all()


@pytest.mark.parametrize("independent", [True, False])
def test_modalities_draw_their_own_levels_only_when_independent(independent: bool) -> None:
    x0, prefix = _data(4)
    result = teacher_forcing_flow_matching(AffineStub(), SEQ, x0, prefix, None, NoiseSchedule(independent_modalities=independent))
    per_chunk = {m: s.unflatten(1, (CHUNKS, -1))[..., 0] for m, s in result.levels.items()}  # (B, L)
    assert torch.equal(per_chunk["video"], per_chunk["audio"]) is not independent


@pytest.mark.parametrize(
    "schedule", [NoiseSchedule(shift=2.0, loc=0.5, scale=0.7), NoiseSchedule(distribution="uniform", shift=3.0)]
)
def test_the_schedule_draws_with_its_own_distribution_and_parameters(schedule: NoiseSchedule) -> None:
    torch.manual_seed(5)
    drawn = schedule.draw(64, 3, torch.device("cpu"))
    torch.manual_seed(5)
    expected = sample_noise_levels(
        (64, 3), device="cpu", distribution=schedule.distribution, shift=schedule.shift, loc=schedule.loc, scale=schedule.scale
    )
    torch.manual_seed(5)
    default = NoiseSchedule().draw(64, 3, torch.device("cpu"))
    assert drawn.shape == (64, 3) and torch.equal(drawn, expected)
    assert (drawn - default).abs().mean() > 0.05  # the parameters matter: a schedule that ignored them would fail


def test_uniform_fraction_trains_the_low_levels_that_a_shifted_logit_normal_skips() -> None:
    """Shift 3 leaves s < 0.2 almost untrained (0.65%); a uniform fraction p puts about 0.2 p of the levels there, and
    the rest of the levels keep the logit-normal's shape."""
    torch.manual_seed(0)
    plain = NoiseSchedule(shift=3.0).draw(400, 100, torch.device("cpu"))
    torch.manual_seed(0)
    mixed = NoiseSchedule(shift=3.0, uniform_fraction=0.3).draw(400, 100, torch.device("cpu"))
    assert mixed.shape == plain.shape == (400, 100)
    assert float((plain < 0.2).float().mean()) < 0.01
    assert float((mixed < 0.2).float().mean()) == pytest.approx(0.3 * 0.2 + 0.7 * 0.0065, abs=0.004)
    kept = mixed == plain  # the levels not replaced: the same draws as without the option (the RNG order is kept)
    assert float(kept.float().mean()) == pytest.approx(0.7, abs=0.01)
    assert float(mixed.min()) >= 0.999e-3 and float(mixed.max()) <= 1 - 0.999e-3  # clamped to [eps, 1 - eps] (float32)
    torch.manual_seed(0)
    assert torch.equal(NoiseSchedule(shift=3.0, uniform_fraction=0.0).draw(400, 100, torch.device("cpu")), plain)
    torch.manual_seed(0)
    everything = NoiseSchedule(shift=3.0, uniform_fraction=1.0).draw(400, 100, torch.device("cpu"))
    assert float((everything < 0.5).float().mean()) == pytest.approx(0.5, abs=0.01)  # uniform: half below 0.5


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_uniform_fraction_must_be_a_fraction(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"NoiseSchedule.uniform_fraction must be in \[0, 1\], got {bad}"):
        NoiseSchedule(uniform_fraction=bad)
