"""MutualForcing's options: each bad one refused by name, what the constructor builds from them (independent and
frozen copies, adapters of the given rank, what is saved), when ``init_ckpt`` is loaded, and how the history
rollout is wired to ``stream`` (window, context level, device, the SDEdit start level)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lightning_mf.flow import grid, interpolate
from lightning_mf.lit import MutualForcing
from lightning_mf.lit.base import SamplerConfig
from lightning_mf.lit.teacher_forcing import RUNTIME_OPTIONS
from lightning_mf.models.lora import LowRankDelta
from lightning_mf.models.transformer import AVTransformer
from tests.lit.test_mutual_forcing import TOWER
from tests.models.tiny_models import randomize

WEIGHTS = "model loss weights must be >= 0, fake_updates and accumulate >= 1"
LEVELS = "model.dmd_levels must satisfy 0 < low <= high < 1, got "


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"teacher": "live"}, "model.teacher must be 'shared', 'ema' or 'frozen', got 'live'"),
        ({"teacher": "ema", "ema_decay": None}, "model.teacher: ema needs model.ema_decay (the EMA is the teacher)"),
        ({"real_score": "live"}, "model.real_score must be 'shared' or 'frozen', got 'live'"),
        (
            {"teacher": "frozen", "real_score": "shared"},
            "model.teacher='frozen' and model.real_score='shared' (its former name) disagree; give teacher only",
        ),
        ({"dmd_sample": "both"}, "model.dmd_sample must be 'rollout' or 'fresh', got 'both'"),
        ({"rollout_steps": (0,)}, "model.rollout_steps must list jump counts >= 1, got [0]"),
        ({"shortcut_steps": ()}, "model.shortcut_steps must list jump counts >= 1, got []"),
        ({"dmd_steps": (2, 0)}, "model.dmd_steps must list jump counts >= 1, got [2, 0]"),
        ({"chunks": (0, 2)}, "model.chunks must be [min, max] with 1 <= min <= max, got [0, 2]"),
        ({"fm_weight": -0.5}, WEIGHTS),
        ({"sd_weight": -0.5}, WEIGHTS),
        ({"sc_weight": -0.5}, WEIGHTS),
        ({"dmd_weight": -0.5}, WEIGHTS),
        ({"anchor_weight": -0.5}, WEIGHTS),
        ({"fake_updates": 0}, WEIGHTS),
        ({"accumulate": 0}, WEIGHTS),
        ({"dmd_levels": (0.0, 0.5)}, LEVELS + "[0.0, 0.5]"),
        ({"dmd_levels": (0.6, 0.5)}, LEVELS + "[0.6, 0.5]"),
        ({"dmd_levels": (0.5, 1.0)}, LEVELS + "[0.5, 1.0]"),
    ],
)
def test_each_bad_option_is_refused_with_its_name(options: dict[str, Any], message: str) -> None:
    """Every option is checked on its own (one bad weight among good ones is enough), and the error names it."""
    with pytest.raises(ValueError) as error:
        MutualForcing(tower=TOWER, **options)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("options", "warns"),
    [
        ({}, False),  # the default teacher is unguided
        ({"distill_cfg": 3.0}, True),  # ShortCut's base target and DMD's real score both guide the shared model
        ({"distill_cfg": 3.0, "dmd_weight": 0.0}, True),  # ShortCut alone still does
        ({"distill_cfg": 3.0, "sc_weight": 0.0}, True),  # so does DMD alone with the shared real score
        ({"distill_cfg": 3.0, "teacher": "ema"}, True),  # an EMA teacher follows the model: a slower loop
        ({"distill_cfg": 3.0, "teacher": "frozen"}, False),  # a frozen teacher is no loop
    ],
)
def test_a_guided_shared_teacher_is_warned_about(options: dict[str, Any], warns: bool, recwarn) -> None:
    """A guided teacher that is the trained model itself is a feedback loop (Multi mode collapsed on the tiny
    preset): it runs, with a warning that says so; an unguided or frozen teacher runs silently."""
    model = MutualForcing(tower=TOWER, **options)
    found = [w for w in recwarn if "with the shared model as teacher" in str(w.message)]
    assert len(found) == int(warns)
    assert model.distill_cfg == options.get("distill_cfg", 1.0)


def test_the_edges_of_the_valid_ranges_are_accepted() -> None:
    """Equal DMD level bounds, one chunk, one jump and zero loss weights are valid (the bounds are inclusive there)."""
    model = MutualForcing(
        tower=TOWER, dmd_levels=(0.3, 0.3), chunks=(1, 1), rollout_steps=(1,), shortcut_steps=(1,), dmd_steps=(1,),
        fm_weight=0.0, sc_weight=0.0,
    )
    assert model.dmd_levels == (0.3, 0.3) and model.weights == {"fm": 0.0, "sc": 0.0, "dmd": 1 / 3, "anchor": 0.0}


def test_the_stage_defaults_reach_the_base_module_and_given_ones_replace_them() -> None:
    """Stage 3 samples in Few mode with 4 jumps and keeps an EMA at 0.99 by default (not the base module's Multi
    mode and 0.999); given values reach the base module instead."""
    model = MutualForcing(tower=TOWER)
    assert model.sampler == SamplerConfig(mode="few", steps=4) and model.ema_decay == 0.99 and model.ema is not None
    assert not model.automatic_optimization  # two optimizers, stepped by hand
    sampler = SamplerConfig(mode="few", steps=2, window=1)
    model = MutualForcing(tower=TOWER, sampler=sampler, ema_decay=0.9)
    assert model.sampler == sampler and model.ema_decay == 0.9


def test_a_validation_outside_an_accumulation_releases_the_gradients_and_one_inside_keeps_them() -> None:
    """A new module is outside any accumulation, so a validation (inside fit) releases gradients as Lightning does;
    one that falls between the micro-batches of a step (``_accumulating``, set by each training step) keeps them."""
    model = MutualForcing(tower=TOWER)
    weight = next(model.net.parameters())
    weight.grad = torch.ones_like(weight)
    model.on_validation_model_zero_grad()
    assert weight.grad is None
    weight.grad = torch.ones_like(weight)
    model._accumulating = True
    model.on_validation_model_zero_grad()
    assert weight.grad is not None and bool((weight.grad == 1).all())


def _storages(net: torch.nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in net.parameters()}


def test_the_fake_score_and_the_frozen_teacher_are_independent_copies_and_the_teacher_needs_no_gradient() -> None:
    """A ``copy`` fake score and a ``frozen`` teacher start equal to the shared model but share no parameter with it
    (training the fake score must not move the shared model); the teacher's parameters need no gradient, the
    shared model's and the fake score's do."""
    model = MutualForcing(tower=TOWER, teacher="frozen")
    for other in (model.fake, model.teacher):
        assert _storages(other).isdisjoint(_storages(model.net))
        for (name, a), b in zip(model.net.state_dict().items(), other.state_dict().values()):
            assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.net.parameters()) and all(p.requires_grad for p in model.fake.parameters())


def test_a_low_rank_fake_score_has_adapters_of_the_configured_rank() -> None:
    """``fake_rank`` reaches every adapter (not LowRankDelta's own default of 8), with the scale alpha / rank."""
    model = MutualForcing(tower=TOWER, fake_score="lora", fake_rank=3)
    assert isinstance(model.fake, LowRankDelta) and model.fake.scale == pytest.approx(8.0 / 3)
    assert len(model.fake.down) > 0
    assert all(d.shape[0] == 3 for d in model.fake.down.values()) and all(u.shape[1] == 3 for u in model.fake.up.values())


def test_the_shortcut_pairs_are_rebuilt_not_saved() -> None:
    """The (s, d) pairs table follows from shortcut_steps, few_shift and min_step, so it is not in the state dict: a
    checkpoint of a run with other grids loads (strictly) and leaves this run's table."""
    mine = MutualForcing(tower=TOWER, shortcut_steps=(2,))
    theirs = MutualForcing(tower=TOWER, shortcut_steps=(1, 2, 4, 8))
    assert len(mine.pairs) != len(theirs.pairs) and "pairs" in dict(mine.named_buffers())  # a buffer: moves with .to()
    assert not any(key.endswith("pairs") for key in mine.state_dict())
    table = mine.pairs.clone()
    mine.load_state_dict(theirs.state_dict())
    assert torch.equal(mine.pairs, table)


@pytest.mark.skipif(
    "MUTANT_UNDER_TEST" in os.environ,  # mutmut sets it (to "" for its clean run)
    reason="under mutmut __init__ runs renamed, and Lightning's save_hyperparameters only reads frames named __init__",
)
def test_runtime_options_are_not_saved_as_hyperparameters() -> None:
    """The hyper-parameters saved with a checkpoint hold the stage's options but not the runtime ones (how predict
    samples, where it writes), which the run that loads the checkpoint gives."""
    model = MutualForcing(tower=TOWER, shortcut_steps=(2,), history="sdedit", sampler=SamplerConfig(mode="few", steps=2))
    assert set(RUNTIME_OPTIONS).isdisjoint(model.hparams)
    assert model.hparams["history"] == "sdedit" and tuple(model.hparams["shortcut_steps"]) == (2,)


# ------------------------------------------------------------------------------------------- setup: init_ckpt


def _stage_2_checkpoint(tmp_path: Path) -> tuple[str, AVTransformer]:
    """A checkpoint file with random weights (std 0.2), and the network stage 3 must start from: those weights with
    the step-size path made inert again."""
    source = randomize(MutualForcing(tower=TOWER, ema_decay=None, sd_weight=0.0).net, std=0.2, seed=3)
    path = tmp_path / "stage2.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, path)
    expected = copy.deepcopy(source)
    with torch.no_grad():
        for tower in expected.towers.values():
            tower.reset_step_size()
    return str(path), expected


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_fresh_fit_starts_every_network_from_init_ckpt_and_a_resumed_fit_does_not(tmp_path: Path) -> None:
    """Under a Trainer, a fit without ``ckpt_path`` loads ``init_ckpt`` into the shared model, its EMA, the fake score
    and the frozen teacher; a resumed fit (``ckpt_path`` set) keeps what the checkpoint restores, and stages other
    than fit never load it."""
    path, expected = _stage_2_checkpoint(tmp_path)
    fresh = MutualForcing(tower=TOWER, init_ckpt=path, teacher="frozen")
    fresh._trainer = SimpleNamespace(ckpt_path=None)
    fresh.setup("fit")
    for net in (fresh.net, fresh.ema, fresh.fake, fresh.teacher):
        assert _same(net, expected)
    for trainer, stage in ((SimpleNamespace(ckpt_path=str(tmp_path / "last.ckpt")), "fit"), (None, "validate"), (None, "predict")):
        model = MutualForcing(tower=TOWER, init_ckpt=path)
        before = copy.deepcopy(model.net)
        model._trainer = trainer
        model.setup(stage)
        assert _same(model.net, before) and not _same(model.net, expected), stage


def test_a_missing_init_ckpt_is_named_by_its_config_field(tmp_path: Path) -> None:
    model = MutualForcing(tower=TOWER, init_ckpt=str(tmp_path / "nowhere.ckpt"))
    with pytest.raises(FileNotFoundError, match=r"^model\.init_args\.init_ckpt=.*nowhere\.ckpt does not exist"):
        model.setup("fit")


# ------------------------------------------------------------------------------------------- rollout -> stream


class _Stream:
    """Stands in for ``stream``: records how it was called, and samples each chunk with ``sample(velocity, noise)``
    for a known velocity (``0.1 x + 0.3``, recording each call's input and level), writing the results."""

    def __init__(self, device: str = "cpu") -> None:
        self.args: tuple = ()
        self.kwargs: dict[str, Any] = {}
        self.noises: list[dict[str, torch.Tensor]] = []
        self.calls: list[tuple[dict[str, torch.Tensor], float, float]] = []  # (x, s, d) per velocity call
        self.written: list[dict[str, torch.Tensor]] = []
        self.device = device

    def velocity(self, x: dict[str, torch.Tensor], s: float, d: float) -> dict[str, torch.Tensor]:
        self.calls.append((x, s, d))
        return {m: 0.1 * v + 0.3 for m, v in x.items()}

    def __call__(self, net: Any, seq: Any, sample: Any, **kwargs: Any):
        self.args, self.kwargs = (net, seq, sample), kwargs
        generator = torch.Generator().manual_seed(len(self.noises))
        for _ in range(kwargs["num_chunks"]):
            noise = {
                m: torch.randn(kwargs["batch"], seq.tokens_per_chunk(m), seq.token_dim(m), generator=generator).to(self.device)
                for m in seq.modalities
            }
            self.noises.append(noise)
            chunk = sample(self.velocity, noise)
            self.written.append({m: v + 1.0 for m, v in chunk.items()})  # "noised to ctx_s": not the sample itself
            kwargs["on_write"](self.written[-1])
            yield chunk


def _x0(model: MutualForcing, chunks: int, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {m: torch.randn(batch, chunks * model.seq.tokens_per_chunk(m), model.seq.token_dim(m), generator=g) for m in model.seq.modalities}


def test_the_rollout_streams_few_mode_with_the_stages_window_context_level_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks 1..L-1 come from ``stream`` on the shared model with this batch's prefix and transcript, the training
    window, ctx_s and device, each sampled by the Few-mode grid of the drawn jump count on ``few_shift``; the history
    is what was written to the cache, at level ctx_s. One history chunk is streamed too; none, nothing is."""
    import lightning_mf.lit.mutual_forcing as module

    model = MutualForcing(tower=TOWER, rollout_steps=(2,), few_shift=2.0, window=1, ctx_s=0.1)
    prefix, cond = object(), object()
    for count in (3, 2):
        fake = _Stream()
        monkeypatch.setattr(module, "stream", fake)
        x0 = _x0(model, count)
        history, levels, made = model.rollout(x0, count, prefix, cond, torch.Generator().manual_seed(0))
        assert made is None  # DMD draws another grid (4 jumps): nothing to reuse
        assert fake.args[:2] == (model.net, model.seq)
        on_write = fake.kwargs.pop("on_write")
        assert callable(on_write) and fake.kwargs == {
            "num_chunks": count - 1, "batch": 2, "prefix": prefix, "cond": cond, "window": 1, "ctx_s": 0.1, "device": model.device,
        }
        jumps = grid(2, 2.0, few=True)
        assert [(s, d) for _, s, d in fake.calls] == [(s, d) for _ in range(count - 1) for s, _, d in jumps]
        for m in model.seq.modalities:
            torch.testing.assert_close(history[m], torch.cat([w[m] for w in fake.written], dim=1), rtol=0, atol=0)
            assert levels[m].shape == history[m].shape[:2] and bool((levels[m] == 0.1).all())
    fake = _Stream()
    monkeypatch.setattr(module, "stream", fake)
    history, levels, made = model.rollout(_x0(model, 1), 1, prefix, cond, torch.Generator().manual_seed(0))
    assert fake.kwargs == {} and levels is None and made is None and all(h.shape[1] == 0 for h in history.values())


@pytest.mark.parametrize("count", [3, 1])
def test_a_rollout_dmd_can_reuse_streams_chunk_l_too_and_keeps_each_chunks_state_before_its_last_jump(
    monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """When DMD may draw the rollout's grid, ``stream`` makes all L chunks (even L = 1, with no history); the
    history is still the first L-1 written, and the Few samples hold the rollout's grid and, per chunk, the state the
    last jump started from. Any other grid in ``dmd_steps`` does not change that."""
    import lightning_mf.lit.mutual_forcing as module

    model = MutualForcing(tower=TOWER, rollout_steps=(2,), dmd_steps=(4, 2), few_shift=2.0)
    fake = _Stream()
    monkeypatch.setattr(module, "stream", fake)
    history, levels, made = model.rollout(_x0(model, count), count, None, None, torch.Generator().manual_seed(0))
    assert fake.kwargs["num_chunks"] == count and levels is None
    jumps = grid(2, 2.0, few=True)
    assert made.jumps == jumps
    last = [x for x, s, _ in fake.calls if s == jumps[-1][0]]  # the input of each chunk's last jump
    assert len(last) == count
    for m in model.seq.modalities:
        written = [w[m] for w in fake.written[: count - 1]]
        assert history[m].shape[1] == (count - 1) * model.seq.tokens_per_chunk(m)
        if written:
            torch.testing.assert_close(history[m], torch.cat(written, dim=1), rtol=0, atol=0)
        torch.testing.assert_close(made.before_last[m], torch.cat([x[m] for x in last], dim=1), rtol=0, atol=0)

def test_the_history_levels_live_on_the_historys_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """(On a GPU the levels must be where the history is: the meta device stands in for it here.)"""
    import lightning_mf.lit.mutual_forcing as module

    model = MutualForcing(tower=TOWER, rollout_steps=(1,), ctx_s=0.2)
    monkeypatch.setattr(module, "stream", _Stream(device="meta"))
    _, levels, _ = model.rollout(_x0(model, 2), 2, None, None, torch.Generator().manual_seed(0))
    assert all(v.device.type == "meta" for v in levels.values())


@pytest.mark.parametrize(("level", "start"), [(0.75, 0.75), (0.6, 0.5)])
def test_sdedit_starts_each_chunk_at_the_first_grid_level_at_or_below_sdedit_level(
    monkeypatch: pytest.MonkeyPatch, level: float, start: float
) -> None:
    """SDEdit chunk k starts from its own real tokens noised (with the stream's noise) to the first level of the
    rollout grid <= sdedit_level, and takes the grid's remaining jumps from there. The 4-jump grid at shift 3 has
    levels 1, 0.9, 0.75, 0.5: a level on the grid is included (0.75), one between levels snaps down (0.6 -> 0.5)."""
    import lightning_mf.lit.mutual_forcing as module

    jumps = grid(4, 3.0, few=True)
    assert [s for s, _, _ in jumps] == pytest.approx([1.0, 0.9, 0.75, 0.5])  # the levels this test is about
    model = MutualForcing(tower=TOWER, history="sdedit", sdedit_level=level, rollout_steps=(4,), few_shift=3.0)
    fake = _Stream()
    monkeypatch.setattr(module, "stream", fake)
    x0 = _x0(model, 3)
    model.rollout(x0, 3, None, None, torch.Generator().manual_seed(0))
    tail = [(s, d) for s, _, d in jumps if s <= level]
    assert tail[0][0] == pytest.approx(start)
    assert [(s, d) for _, s, d in fake.calls] == tail * 2  # the remaining jumps, for chunks 1 and 2
    firsts = [x for x, s, _ in fake.calls if s == tail[0][0]]  # the state each chunk starts from
    for k, (x, noise) in enumerate(zip(firsts, fake.noises)):
        for m in model.seq.modalities:
            n = model.seq.tokens_per_chunk(m)
            torch.testing.assert_close(x[m], interpolate(x0[m][:, k * n : (k + 1) * n], noise[m], tail[0][0]), rtol=0, atol=0)
