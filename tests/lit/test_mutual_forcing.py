"""MutualForcing: what one step updates, what the rollout is, the reduction to stage 2, and rank-identical choices."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_mf.batch import AVBatch
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.flow import grid, interpolate
from lightning_mf.lit import JointTraining, MutualForcing
from lightning_mf.models import TowerConfig
from lightning_mf.models.transformer import AVTransformer
from lightning_mf.objectives.flow_matching import TeacherForced
from lightning_mf.sampling import integrate
from lightning_mf.sampling.streaming import stream
from lightning_mf.spec import AVSpec
from tests.models.tiny_models import randomize

TOWER = TowerConfig(dim=32, depth=2, heads=2, vocab_size=32)


def _datamodule(tiny_shards: Path) -> AVDataModule:
    return AVDataModule(root=str(tiny_shards), spec=AVSpec(), window_chunks=3, batch_size=4, batches_per_epoch=4)


def _batch(tiny_shards: Path):
    dm = _datamodule(tiny_shards)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def _trainer(steps: int = 1) -> L.Trainer:
    return L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, enable_model_summary=False,
    )


def _model(**kwargs) -> MutualForcing:
    model = MutualForcing(tower=TOWER, **kwargs)
    randomize(model.net, std=0.05, seed=1)  # zero-initialised outputs would make every distillation term 0
    if isinstance(model.fake, AVTransformer):  # a full copy (a low-rank fake score follows model.net itself)
        model.fake.load_state_dict(model.net.state_dict())
    if model.ema is not None:
        model.ema.load_state_dict(model.net.state_dict())
    return model


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], net: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("distill_cfg", [1.0, 3.0])
def test_one_step_updates_the_shared_weights_and_the_fake_score_with_finite_losses(tiny_shards: Path, distill_cfg: float) -> None:
    """Every term is finite and positive, except DMD's on the first step with an unguided teacher: the fake score
    starts as a copy of the shared model, so real and fake scores agree exactly until one of them has moved."""
    L.seed_everything(0)
    model = _model(history="rollout", chunks=(2, 3), distill_cfg=distill_cfg)
    net, fake = _snapshot(model.net), _snapshot(model.fake)
    trainer = _trainer()
    trainer.fit(model, _datamodule(tiny_shards))
    assert trainer.global_step == 1  # the fake score's step is not counted
    assert _changed(net, model.net) and _changed(fake, model.fake)
    logged = trainer.callback_metrics
    for name in ("train/fm", "train/sc", "train/dmd", "train/fake_fm", "train/loss"):
        assert torch.isfinite(logged[name]) and (logged[name] > 0 or (name == "train/dmd" and distill_cfg == 1)), name
    assert (float(logged["train/dmd"]) == 0.0) == (distill_cfg == 1)
    total = logged["train/fm"] + 2 / 3 * logged["train/sc"] + 1 / 3 * logged["train/dmd"]
    torch.testing.assert_close(logged["train/loss"], total, rtol=1e-5, atol=1e-6)


def test_the_rollout_is_inference_and_carries_no_gradient(tiny_shards: Path) -> None:
    """History = ``stream`` in Few mode; and the parallel teacher-forced view of that history (what training
    attends to) reproduces every rolled-out chunk from the same noise: training sees what inference made."""
    torch.manual_seed(0)
    model = _model(history="rollout", rollout_steps=(2,))
    batch = _batch(tiny_shards)
    x0 = model.seq.encode(batch)
    prefix, cond = model.prefix(batch), model.condition(batch)
    ctl = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    history, levels, made = model.rollout(x0, 3, prefix, cond, ctl)  # chunks 1, 2
    assert levels is None and made is None  # ctx_s = 0: written clean; DMD draws another grid (4 jumps)
    assert all(not h.requires_grad and h.grad_fn is None for h in history.values())

    noises = []

    def recording(velocity, noise):
        noises.append(noise)
        return integrate(velocity, noise, grid(2, model.few_shift, few=True))

    torch.manual_seed(1)
    pieces = list(stream(model.net, model.seq, recording, num_chunks=2, batch=batch.size, prefix=prefix, cond=cond))
    for m in history:
        torch.testing.assert_close(history[m], torch.cat([p[m] for p in pieces], dim=1), rtol=0, atol=0)
    parallel = TeacherForced(model.net, model.seq, history, prefix, cond)
    noise = {m: torch.cat([n[m] for n in noises], dim=1) for m in history}
    with torch.no_grad():
        again = integrate(parallel, noise, grid(2, model.few_shift, few=True))
    for m in history:
        torch.testing.assert_close(again[m], history[m], rtol=1e-3, atol=2e-4)  # float32, different sequence lengths
        assert history[m].abs().mean() > 0.01  # a real sample, not zeros


@pytest.mark.parametrize("ctx_s", [0.0, 0.3])
def test_dmd_reuses_the_rollouts_chunks_and_takes_only_their_last_jump_again(tiny_shards: Path, ctx_s: float) -> None:
    """With ``dmd_sample: rollout`` the DMD sample of chunks 1..L is what ``stream`` makes from the same noise (the
    rollout streams chunk L for it), each chunk's last jump taken again in parallel, with gradient; the history is the
    first L-1 of them as written to the cache. ``fresh`` samples every chunk anew from other noise."""
    torch.manual_seed(0)
    model = _model(history="rollout", rollout_steps=(2,), dmd_steps=(2,), ctx_s=ctx_s)
    randomize(model.net, std=0.2, seed=3)
    batch = _batch(tiny_shards)
    x0, prefix, cond = model.seq.encode(batch), model.prefix(batch), model.condition(batch)
    torch.manual_seed(1)
    history, levels, made = model.rollout(x0, 3, prefix, cond, torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    written = []
    sample = partial(integrate, grid=grid(2, model.few_shift, few=True))
    pieces = list(stream(model.net, model.seq, sample, num_chunks=3, batch=batch.size, prefix=prefix, cond=cond, ctx_s=ctx_s, on_write=written.append))
    streamed = {m: torch.cat([p[m] for p in pieces], dim=1) for m in x0}
    assert made is not None and made.jumps == grid(2, model.few_shift, few=True)
    for m in x0:
        torch.testing.assert_close(history[m], torch.cat([w[m] for w in written[:2]], dim=1), rtol=0, atol=0)
    few = TeacherForced(model.net, model.seq, history, prefix, cond, levels)
    losses, dmd_sample = model.dmd(few, x0, torch.Generator().manual_seed(0), made)
    for m in x0:
        assert dmd_sample[m].shape == x0[m].shape and dmd_sample[m].abs().mean() > 0.05
        torch.testing.assert_close(dmd_sample[m], streamed[m], rtol=1e-3, atol=1e-3)  # float32, other sequence lengths
    sum(losses.values()).backward()
    assert model.net.towers.video.embed.weight.grad.abs().sum() > 0  # through the last jump
    fresh = _model(history="rollout", rollout_steps=(2,), dmd_steps=(2,), dmd_sample="fresh", ctx_s=ctx_s)
    assert fresh.rollout(x0, 3, prefix, cond, torch.Generator().manual_seed(0))[2] is None
    _, other = fresh.dmd(few.using(net=fresh.net), x0, torch.Generator().manual_seed(0))
    assert all((other[m] - streamed[m]).abs().mean() > 0.05 for m in x0)


def test_sdedit_history_starts_from_the_noised_real_chunks(tiny_shards: Path) -> None:
    model = _model(history="sdedit", sdedit_level=0.0, rollout_steps=(4,))  # level 0: nothing to denoise
    batch = _batch(tiny_shards)
    x0 = model.seq.encode(batch)
    history, _, _ = model.rollout(x0, 3, model.prefix(batch), model.condition(batch), torch.Generator().manual_seed(0))
    for m, x in x0.items():
        torch.testing.assert_close(history[m], x[:, : history[m].shape[1]])
    model = _model(history="sdedit", sdedit_level=0.5, rollout_steps=(4,))
    history, _, _ = model.rollout(x0, 3, model.prefix(batch), model.condition(batch), torch.Generator().manual_seed(0))
    gap = {m: (history[m] - x[:, : history[m].shape[1]]).abs().mean().item() for m, x in x0.items()}
    assert all(g > 1e-3 for g in gap.values())


def test_with_no_self_distillation_and_real_history_it_is_exactly_stage_2(tiny_shards: Path) -> None:
    optimizer = partial(torch.optim.AdamW, lr=1e-3)
    joint = JointTraining(tower=TOWER, optimizer=optimizer, ema_decay=0.99)
    randomize(joint.net, std=0.05, seed=1)
    joint.ema.load_state_dict(joint.net.state_dict())
    mf = MutualForcing(tower=TOWER, optimizer=optimizer, history="real", sd_weight=0.0, ema_decay=0.99)
    mf.net.load_state_dict(joint.net.state_dict())
    mf.ema.load_state_dict(joint.net.state_dict())
    assert mf.fake is None and mf.teacher is None  # nothing to distil: no fake score is built
    before = _snapshot(joint.net)
    for model in (joint, mf):
        L.seed_everything(0)
        _trainer(2).fit(model, _datamodule(tiny_shards))
    assert _changed(before, joint.net)
    for (name, a), b in zip(joint.net.state_dict().items(), mf.net.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    for a, b in zip(joint.ema.state_dict().values(), mf.ema.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_control_flow_choices_are_identical_across_ranks_and_vary_across_steps() -> None:
    model = _model(chunks=(1, 2), rollout_steps=(2, 4, 8))
    draws = []
    for rank_seed in (0, 1):  # two "ranks": different global RNG states
        torch.manual_seed(rank_seed)
        per_step = []
        for step in range(24):
            ctl = model.control(step)
            per_step.append((model._crop({"video": torch.zeros(1, 3 * 16, 1)}, 3, ctl)[1], model._choose((2, 4, 8), ctl)))
        draws.append(per_step)
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 2  # lengths and grids really vary
    assert {count for count, _ in draws[0]} == {1, 2} and {grid for _, grid in draws[0]} == {2, 4, 8}  # all, and only, these
    cropped = model._crop({"video": torch.arange(48.0).view(1, 48, 1)}, 3, model.control(0))
    assert torch.equal(cropped[0]["video"], torch.arange(16.0 * cropped[1]).view(1, -1, 1))  # the window's first chunks


def test_a_frozen_teacher_stays_frozen_and_bad_options_are_named(tiny_shards: Path) -> None:
    L.seed_everything(0)
    model = _model(history="rollout", fm_weight=0.0, sc_weight=0.0, dmd_weight=1.0, teacher="frozen")
    model.teacher.load_state_dict(model.net.state_dict())
    teacher = _snapshot(model.teacher)
    net = _snapshot(model.net)
    _trainer().fit(model, _datamodule(tiny_shards))
    assert not _changed(teacher, model.teacher) and _changed(net, model.net)
    with pytest.raises(ValueError, match="model.history must be"):
        MutualForcing(tower=TOWER, history="teacher")
    with pytest.raises(ValueError, match="model.chunks must be"):
        MutualForcing(tower=TOWER, chunks=(3, 2))
    with pytest.raises(ValueError, match="model.dmd_steps must list"):
        MutualForcing(tower=TOWER, dmd_steps=())
    model = _model(chunks=(1, 9))
    with pytest.raises(ValueError, match="model.chunks max 9 exceeds the 3 chunks"):
        _trainer().fit(model, _datamodule(tiny_shards))


def test_a_low_rank_fake_score_starts_as_the_shared_model_and_trains_only_its_adapters(tiny_shards: Path) -> None:
    L.seed_everything(0)
    model = _model(history="real", fake_score="lora", fake_rank=4)
    batch = _batch(tiny_shards)
    few = TeacherForced(model.net, model.seq, model.seq.encode(batch), model.prefix(batch), model.condition(batch))
    x = {m: torch.randn_like(v) for m, v in few.history.items()}
    with torch.no_grad():
        shared, fake = few(x, 0.5, 0.0), few.using(net=model.fake)(x, 0.5, 0.0)
    for m in x:
        torch.testing.assert_close(fake[m], shared[m])  # B = 0: the fake score is the shared model
    names = [k for k in model.state_dict() if k.startswith("fake.")]
    assert names and all(".down." in k or ".up." in k for k in names)  # only adapters are its own (and saved)
    adapters, net = _snapshot(model.fake), _snapshot(model.net)
    _trainer().fit(model, _datamodule(tiny_shards))
    assert _changed(adapters, model.fake) and _changed(net, model.net)
    with torch.no_grad():
        after = few.using(net=model.fake)(x, 0.5, 0.0)
    assert any(not torch.allclose(after[m], few(x, 0.5, 0.0)[m]) for m in x)  # it learned a difference
    with pytest.raises(ValueError, match="model.fake_score must be"):
        MutualForcing(tower=TOWER, fake_score="full")


def test_fsdp_shards_every_network_the_stage_holds() -> None:
    """``networks()`` is what ``configure_model`` shards: the shared model, its EMA, a full fake score and a frozen
    teacher; low-rank adapters ride on the shared model, so they are refused under FSDP."""
    full = MutualForcing(tower=TOWER, teacher="frozen")
    assert full.networks() == [full.net, full.ema, full.fake, full.teacher]
    lora = MutualForcing(tower=TOWER, fake_score="lora", ema_decay=None)
    assert lora.networks() == [lora.net]
    lora._device_mesh = object()  # as under ModelParallelStrategy
    with pytest.raises(ValueError, match="model.fake_score: lora is not supported under FSDP"):
        lora.networks()


def test_a_rollout_written_at_a_context_level_is_the_history_training_conditions_on(tiny_shards: Path) -> None:
    """With ctx_s > 0 the cache holds each chunk re-noised; the rollout hands training exactly that (and its level),
    not the clean chunks streaming never attends to."""
    model = _model(history="rollout", rollout_steps=(2,), ctx_s=0.2)
    batch = _batch(tiny_shards)
    x0, prefix, cond = model.seq.encode(batch), model.prefix(batch), model.condition(batch)
    torch.manual_seed(1)
    history, levels, _ = model.rollout(x0, 3, prefix, cond, torch.Generator().manual_seed(0))
    written = []
    torch.manual_seed(1)
    sample = partial(integrate, grid=grid(2, model.few_shift, few=True))
    clean = list(stream(model.net, model.seq, sample, num_chunks=2, batch=batch.size, prefix=prefix, cond=cond,
                        ctx_s=0.2, on_write=written.append))
    for m in history:
        torch.testing.assert_close(history[m], torch.cat([w[m] for w in written], dim=1), rtol=0, atol=0)
        assert (history[m] - torch.cat([c[m] for c in clean], dim=1)).abs().mean() > 0.05  # noised, not the samples
        assert levels[m].shape == history[m].shape[:2] and bool((levels[m] == 0.2).all())


def test_stage_3_starts_with_few_mode_equal_to_multi_mode_on_a_trained_stage_2_checkpoint(tiny_shards: Path, tmp_path: Path) -> None:
    """Stages 1-2 train d_embed as a constant (every step has d = 0), so on their checkpoint a jump d > 0 changes the
    velocity; stage 3 folds that constant into s_embed and zeroes the d path: Multi mode stays the checkpoint's and
    every Few jump starts as exactly the Multi velocity (an Euler jump, METHOD §1)."""
    L.seed_everything(0)
    joint = JointTraining(tower=TOWER, optimizer=partial(torch.optim.AdamW, lr=1e-2), ema_decay=None)
    trainer = _trainer(3)
    trainer.fit(joint, _datamodule(tiny_shards))
    path = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(path)
    mf = MutualForcing(tower=TOWER, init_ckpt=str(path), init_from_ema=False)
    mf.setup("fit")
    batch = _batch(tiny_shards)
    x0 = mf.seq.encode(batch)
    history = {m: x[:, : 2 * mf.seq.tokens_per_chunk(m)] for m, x in x0.items()}
    x = {m: torch.randn_like(v) for m, v in x0.items()}
    before = TeacherForced(joint.net, mf.seq, history, mf.prefix(batch), mf.condition(batch))
    after = before.using(net=mf.net)
    with torch.no_grad():
        multi = before(x, 0.7, 0.0)
        assert max((before(x, 0.7, 0.5)[m] - multi[m]).abs().max() for m in x) > 1e-3  # the trained d path acts
        for m, v in after(x, 0.7, 0.0).items():
            torch.testing.assert_close(v, multi[m], rtol=1e-5, atol=1e-5)  # Multi mode is the checkpoint's
        for d in (1 / 32, 0.25, 0.5, 1.0):
            few = after(x, 0.7, d)
            assert all(torch.equal(few[m], after(x, 0.7, 0.0)[m]) for m in x)
    for net in (mf.ema, mf.fake):
        for (name, a), b in zip(mf.net.state_dict().items(), net.state_dict().values()):
            assert torch.equal(a, b), name  # the EMA and the fake score start from the same reset weights


class ConstantMulti(torch.nn.Module):
    """A stub network: velocity ``multi`` at d = 0 (any conditioning) and ``0.1 x + p`` for a jump d > 0 (``p`` a
    trainable scalar, so a Few-mode output carries a gradient); records the step sizes and grad mode of each call."""

    def __init__(self, multi: float) -> None:
        super().__init__()
        self.multi, self.p = multi, torch.nn.Parameter(torch.tensor(0.3))
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, tokens, d=0.0, **_) -> dict[str, torch.Tensor]:
        first = next(iter(tokens.values()))
        d = torch.as_tensor(d, dtype=torch.float32).expand(first.x.shape[0])
        self.calls.append((d.clone(), torch.is_grad_enabled()))
        jump = (d > 0).view(-1, 1, 1)
        return {m: torch.where(jump, 0.1 * t.x + self.p, torch.full_like(t.x, self.multi)) for m, t in tokens.items()}


def _stub_view(model: MutualForcing, tiny_shards: Path, net: torch.nn.Module):
    batch = _batch(tiny_shards)
    x0 = model.seq.encode(batch)
    history = {m: x[:, : 2 * model.seq.tokens_per_chunk(m)] for m, x in x0.items()}
    return TeacherForced(net, model.seq, history, model.prefix(batch), model.condition(batch)), x0


def test_the_shortcut_prediction_is_made_at_the_sampled_jump_against_a_no_grad_target(tiny_shards: Path) -> None:
    model = _model(history="real", shortcut_steps=(2,), min_step=0.25)
    stub = ConstantMulti(multi=0.7)
    few, x0 = _stub_view(model, tiny_shards, stub)
    losses = model.shortcut(few, x0, torch.Generator().manual_seed(0))
    *target_calls, (d, grad) = stub.calls
    assert grad and not any(g for _, g in target_calls)  # only the prediction carries a gradient
    rows = model.pairs
    assert bool((d > 0).all()) and all(float(v) in rows[:, 1].float().tolist() for v in d)  # a grid jump per sample
    first, second = (c for c, _ in target_calls)  # this draw mixes base and other rows: two calls in all
    base = first == 0  # base rows ask Multi mode (d = 0) in the call that makes the other rows' first half jump
    assert bool(base.any()) and bool((~base).any())
    torch.testing.assert_close(first[~base], d[~base] / 2)
    torch.testing.assert_close(second, d / 2)  # the second half jump (computed for the whole batch)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert stub.p.grad is not None and stub.p.grad.abs() > 0


def test_shortcut_draws_its_rows_from_the_control_generator_with_replacement(tiny_shards: Path) -> None:
    """Each sample's (s, d) is one row of the pairs table, drawn by the control generator (identical on every rank,
    whatever the global RNG did), with replacement: a batch larger than the table is fine."""
    model = _model(history="real", shortcut_steps=(2,), min_step=0.5)
    seen = []

    class Record(ConstantMulti):
        def forward(self, tokens, d=0.0, **kwargs):
            seen.append(next(iter(tokens.values())).s[:, -1].clone())  # the level of each sample's noisy chunk
            return super().forward(tokens, d=d, **kwargs)

    stub = Record(multi=0.7)
    batch = _batch(tiny_shards)
    batch = AVBatch(batch.video.repeat(4, 1, 1, 1, 1), batch.audio.repeat(4, 1), batch.start_frame.repeat(4), batch.keys * 4, batch.meta * 4)
    x0 = model.seq.encode(batch)
    history = {m: x[:, : 2 * model.seq.tokens_per_chunk(m)] for m, x in x0.items()}
    few = TeacherForced(stub, model.seq, history, model.prefix(batch), model.condition(batch))
    assert len(model.pairs) < batch.size
    draws = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        stub.calls.clear()
        seen.clear()
        model.shortcut(few, x0, torch.Generator().manual_seed(5))
        draws.append(torch.stack([seen[-1], stub.calls[-1][0]], 1))  # (s, d) of the prediction's call
    torch.testing.assert_close(draws[0], draws[1])  # the control generator alone decides
    rows, drawn = {tuple(r) for r in model.pairs[:, :2].tolist()}, {tuple(r) for r in draws[0].tolist()}
    assert drawn <= rows and len(drawn) > 1 and any(s != d for s, d in drawn)


def test_the_shortcut_loss_is_the_squared_error_of_the_prediction_against_its_target(tiny_shards: Path, monkeypatch) -> None:
    import lightning_mf.lit.mutual_forcing as module

    noised = []  # the noisy chunks ShortCut predicts from, one per modality
    monkeypatch.setattr(module, "interpolate", lambda *args: noised.append(interpolate(*args)) or noised[-1])
    monkeypatch.setattr(module, "shortcut_target", lambda few, x, s, d, base, uncond, cfg, multi=None: {m: torch.full_like(v, 2.0) for m, v in x.items()})
    model = _model(history="real")
    few, x0 = _stub_view(model, tiny_shards, ConstantMulti(multi=0.7))
    losses = model.shortcut(few, x0, torch.Generator().manual_seed(0))
    assert set(losses) == set(x0) and len(noised) == len(x0)
    for (m, loss), x in zip(losses.items(), noised):
        torch.testing.assert_close(loss, (0.1 * x + 0.3 - 2.0).pow(2).mean())  # the stub's jump velocity vs the target


@pytest.mark.parametrize(("teacher", "multi"), [("shared", 0.7), ("ema", 0.2), ("frozen", -0.4), ("real_score=frozen", -0.4)])
def test_the_shortcut_base_rows_learn_the_teachers_multi_velocity(tiny_shards: Path, monkeypatch, teacher: str, multi: float) -> None:
    """With one jump of the whole path and ``min_step`` 1 every row is a base row, so ShortCut regresses the Few jump
    onto the teacher's Multi velocity: the shared model's own (0.7 here), its EMA's (0.2) or the frozen copy's (-0.4).
    ``real_score``, the option's former name, still picks the frozen copy."""
    import lightning_mf.lit.mutual_forcing as module

    noised = []
    monkeypatch.setattr(module, "interpolate", lambda *args: noised.append(interpolate(*args)) or noised[-1])
    option = {"real_score": "frozen"} if teacher.startswith("real_score") else {"teacher": teacher}
    model = _model(history="real", shortcut_steps=(1,), min_step=1.0, **option)
    model.ema, model.teacher = ConstantMulti(multi=0.2), ConstantMulti(multi=-0.4)
    shared = ConstantMulti(multi=0.7)
    few, x0 = _stub_view(model, tiny_shards, shared)
    losses = model.shortcut(few, x0, torch.Generator().manual_seed(0))
    for (m, loss), x in zip(losses.items(), noised):
        torch.testing.assert_close(loss, (0.1 * x + 0.3 - multi).pow(2).mean())
    assert all(not grad for _, grad in model.ema.calls + model.teacher.calls)  # the teacher runs without gradient
    assert model.teacher_source == teacher.removeprefix("real_score=")


class ScaledMulti(ConstantMulti):
    """ConstantMulti whose Multi-mode velocity is ``multi * x`` (so it depends on the input) and that records the noise
    level of each sample's last token."""

    def __init__(self, multi: float) -> None:
        super().__init__(multi)
        self.levels: list[torch.Tensor] = []

    def forward(self, tokens, d=0.0, **kwargs):
        self.levels.append(next(iter(tokens.values())).s[:, -1].clone())
        out = super().forward(tokens, d=d, **kwargs)
        jump = (self.calls[-1][0] > 0).view(-1, 1, 1)
        return {m: torch.where(jump, out[m], self.multi * t.x) for m, t in tokens.items()}


def test_the_anchor_is_the_multi_mode_gap_to_the_frozen_copy_on_the_same_noised_chunks(tiny_shards: Path, monkeypatch) -> None:
    """``L_anchor`` compares the shared model's and the frozen copy's Multi-mode velocities (d = 0) on the same real
    chunks noised to the same per-sample level; only the shared model's call carries gradient. The copy exists for
    the anchor alone when the teacher is the shared model."""
    import lightning_mf.lit.mutual_forcing as module

    noised = []
    monkeypatch.setattr(module, "interpolate", lambda *args: noised.append(interpolate(*args)) or noised[-1])
    model = _model(history="real", anchor_weight=1.0)
    assert model.teacher is not None and model.teacher_source == "shared"
    assert MutualForcing(tower=TOWER).teacher is None  # no anchor, no copy
    shared, model.teacher = ScaledMulti(multi=0.7), ScaledMulti(multi=0.2)
    few, x0 = _stub_view(model, tiny_shards, shared)
    losses = model.anchor(few, x0)
    assert set(losses) == set(x0) and len(noised) == len(x0)
    for (m, loss), x in zip(losses.items(), noised):
        torch.testing.assert_close(loss, (0.5 * x).pow(2).mean())
    torch.testing.assert_close(shared.levels[-1], model.teacher.levels[-1])  # one level per sample, the same for both
    assert len(set(shared.levels[-1].tolist())) > 1  # drawn per sample
    assert all(float(d.abs().max()) == 0 for d, _ in shared.calls + model.teacher.calls)  # Multi mode only
    assert [grad for _, grad in shared.calls] == [True] and [grad for _, grad in model.teacher.calls] == [False]


def test_an_anchored_step_trains_the_shared_model_and_leaves_the_frozen_copy(tiny_shards: Path) -> None:
    L.seed_everything(0)
    model = _model(history="rollout", chunks=(2, 3), anchor_weight=1.0)
    frozen, net = _snapshot(model.teacher), _snapshot(model.net)
    trainer = _trainer()
    trainer.fit(model, _datamodule(tiny_shards))
    assert not _changed(frozen, model.teacher) and _changed(net, model.net)
    anchor = trainer.callback_metrics["train/anchor"]
    assert torch.isfinite(anchor) and anchor > 0  # the randomised shared model differs from the copy


class RecordLevels(ConstantMulti):
    """ConstantMulti that also records the noise level of the last token (the noisy chunk) of each sample."""

    def __init__(self, multi: float) -> None:
        super().__init__(multi)
        self.levels: list[torch.Tensor] = []

    def forward(self, tokens, d=0.0, **kwargs):
        self.levels.append(next(iter(tokens.values())).s[:, -1].clone())
        return super().forward(tokens, d=d, **kwargs)


@pytest.mark.parametrize("teacher", ["shared", "ema", "frozen"])
def test_dmd_pushes_samples_from_the_fake_score_toward_the_real_score(tiny_shards: Path, monkeypatch, teacher: str) -> None:
    """With a real score of constant velocity r and a fake score of constant velocity f, the x0 estimates of the same
    re-noised sample differ by exactly ``fake_x0 - real_x0 = t (r - f)``, with t > 0 the re-noising level: a sign
    error, swapped scores or a fake score that is the shared model itself all break that. The real score is the
    teacher's Multi mode: the shared model's, its EMA's or the frozen copy's."""
    import lightning_mf.lit.mutual_forcing as module

    seen = {}
    real_loss, real_integrate = module.dmd_loss, module.integrate
    monkeypatch.setattr(module, "dmd_loss", lambda sample, real_x0, fake_x0: seen.update(sample=sample, real=real_x0, fake=fake_x0) or real_loss(sample, real_x0, fake_x0))
    monkeypatch.setattr(module, "integrate", lambda *args: seen.update(before_last=real_integrate(*args)) or seen["before_last"])
    model = _model(history="real", dmd_steps=(4,), few_shift=3.0, dmd_levels=(0.3, 0.4), teacher=teacher)
    shared, fake = ConstantMulti(multi=0.7), RecordLevels(multi=-0.5)
    model.fake, r = fake, 0.7
    if teacher != "shared":
        setattr(model, "teacher" if teacher == "frozen" else "ema", ConstantMulti(multi=0.2))
        r = 0.2
    few, x0 = _stub_view(model, tiny_shards, shared)
    losses, sample = model.dmd(few, x0, torch.Generator().manual_seed(0))
    for m in x0:
        t = (seen["fake"][m] - seen["real"][m]) / (r - -0.5)  # (B, N, C), one level per sample
        assert bool((t >= 0.3 - 1e-6).all() and (t <= 0.4 + 1e-6).all())  # drawn in dmd_levels
        torch.testing.assert_close(t, t[:, :1, :1].expand_as(t))
        torch.testing.assert_close(fake.levels[-1], t[:, 0, 0])  # the fake score is asked at that level
        assert torch.equal(sample[m], seen["sample"][m].detach()) and not sample[m].requires_grad
        x, step = seen["before_last"][m], grid(4, 3.0, few=True)[-1][1]
        torch.testing.assert_close(sample[m], x - step * (0.1 * x + 0.3))  # the last jump, with the stub's velocity
    assert not fake.calls[-1][1] and float(fake.calls[-1][0].abs().max()) == 0.0  # the fake score: Multi mode, no grad
    jumps = [float(d[0]) for d, _ in shared.calls if bool((d > 0).all())]  # the Few-mode sample's jumps, in order
    assert jumps == pytest.approx([d for _, _, d in grid(4, 3.0, few=True)])  # dmd_steps (4,) on the few_shift grid
    sum(losses.values()).backward()
    assert shared.p.grad is not None and shared.p.grad.abs() > 0  # through the last Few jump


def test_the_fake_score_trains_on_the_steps_few_mode_samples_not_on_real_data(tiny_shards: Path, monkeypatch) -> None:
    import lightning_mf.lit.mutual_forcing as module

    samples, fitted = [], []
    real_dmd, real_fm = module.dmd_loss, module.teacher_forcing_flow_matching
    monkeypatch.setattr(module, "dmd_loss", lambda sample, r, f: samples.append({m: v.detach().clone() for m, v in sample.items()}) or real_dmd(sample, r, f))

    def recording_fm(net, seq, x0, *args, **kwargs):
        if net is model.fake:
            fitted.append({m: v.clone() for m, v in x0.items()})
        return real_fm(net, seq, x0, *args, **kwargs)

    monkeypatch.setattr(module, "teacher_forcing_flow_matching", recording_fm)
    L.seed_everything(0)
    model = _model(history="rollout", chunks=(2, 2))
    _trainer(1).fit(model, _datamodule(tiny_shards))
    assert len(samples) == 1 and len(fitted) == 1
    for m in samples[0]:
        assert torch.equal(fitted[0][m], samples[0][m])


@pytest.mark.parametrize("stage", ["joint", "mutual_forcing"])
def test_one_plain_sgd_step_moves_the_weights_by_exactly_the_clipped_gradient_norm(tiny_shards: Path, stage: str) -> None:
    """Automatic (stage 2) and manual (stage 3) optimisation clip alike: with SGD at lr 1, the step is the gradient
    itself, so its norm is grad_clip whenever the raw gradient is larger (it is, by orders of magnitude, here)."""
    L.seed_everything(0)
    sgd = partial(torch.optim.SGD, lr=1.0)
    model = JointTraining(tower=TOWER, optimizer=sgd, grad_clip=1e-3) if stage == "joint" else _model(optimizer=sgd, grad_clip=1e-3)
    if stage == "joint":
        randomize(model.net, std=0.05, seed=1)
    before = [p.detach().clone() for p in model.net.parameters()]
    _trainer(1).fit(model, _datamodule(tiny_shards))
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.net.parameters(), before)))
    torch.testing.assert_close(moved, torch.tensor(1e-3), rtol=1e-3, atol=0)


def test_the_step_loss_is_the_weighted_sum_of_its_terms(tiny_shards: Path, monkeypatch) -> None:
    """``fm * L_fm + sd * (sc * L_sc + dmd * L_dmd)``, each distillation term ``L_video + audio_weight * L_audio``."""
    model = _model(fm_weight=0.7, sd_weight=2.0, sc_weight=0.25, dmd_weight=0.5, audio_weight=0.3)
    one = model.net.towers.video.embed.weight.sum() * 0 + 1  # a constant that carries a gradient
    monkeypatch.setattr(model, "shortcut", lambda few, x0, ctl: {"video": 2 * one, "audio": 5 * one})
    monkeypatch.setattr(model, "dmd", lambda few, x0, ctl, made: ({"video": 3 * one, "audio": 7 * one}, {m: torch.zeros_like(v) for m, v in x0.items()}))
    trainer = _trainer(1)
    trainer.fit(model, _datamodule(tiny_shards))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged["train/sc"] == pytest.approx(2 + 0.3 * 5) and logged["train/dmd"] == pytest.approx(3 + 0.3 * 7)
    assert logged["train/fm"] == pytest.approx(logged["train/fm_video"] + 0.3 * logged["train/fm_audio"], rel=1e-5)
    expected = 0.7 * logged["train/fm"] + 2.0 * (0.25 * 3.5 + 0.5 * 5.1)
    assert logged["train/loss"] == pytest.approx(expected, rel=1e-5)
    assert set(trainer.progress_bar_metrics) == {"train/loss"}  # the progress bar shows the loss
    assert logged["train/chunks"] == 3.0  # the chunks this step trained (model.chunks is None: all of the window)


def test_the_fake_score_fits_each_micro_batch_by_flow_matching_from_its_own_seed(monkeypatch) -> None:
    """Every update runs flow matching of the fake score on each micro-batch's sample with that micro-batch's
    prefix, transcript, history, levels and the training window, seeded by (group, update); the loss is averaged
    over micro-batches and ``L_video + audio_weight * L_audio``."""
    import lightning_mf.lit.mutual_forcing as module
    from lightning_mf.objectives.flow_matching import FlowMatchingResult

    model = _model(fake_updates=2, audio_weight=0.3, window=2, motion_weight={"video": 4.0})
    weight = model.fake.towers.video.embed.weight
    calls = []

    def fake_fm(net, seq, sample, prefix, cond, noise, history, window, levels, motion_weight):
        assert motion_weight == {"video": 4.0}  # the same loss weighting as the shared model's flow matching
        calls.append((net, sample, prefix, cond, noise, history, window, levels, torch.initial_seed()))
        k = len(calls)
        errors = {"video": weight.sum() * 0 + torch.full((1, 2), float(k)), "audio": torch.full((1, 2), 10.0 * k)}
        return FlowMatchingResult(errors=errors, levels={m: torch.zeros(1, 2) for m in errors})

    monkeypatch.setattr(module, "teacher_forcing_flow_matching", fake_fm)
    monkeypatch.setattr(model, "manual_backward", lambda loss: loss.backward())
    batches = [(group, *(object() for _ in range(5))) for group in (0, 3)]  # (group, sample, prefix, cond, history, levels)
    total = model.train_fake(torch.optim.SGD(model.fake.parameters(), lr=0.0), batches)
    assert len(calls) == 4
    for i, (net, sample, prefix, cond, noise, history, window, levels, seed) in enumerate(calls):
        update, (group, *parts) = divmod(i, 2)[0], batches[i % 2]
        assert net is model.fake and noise is model.noise and window == 2
        assert [sample, prefix, cond, history, levels] == parts
        assert seed == model.step_seed(group, stream=1 + update)
    torch.testing.assert_close(total, torch.tensor(((3 + 0.3 * 30) + (4 + 0.3 * 40)) / 2))  # the last update's mean


def test_the_fake_score_step_is_clipped(monkeypatch) -> None:
    import lightning_mf.lit.mutual_forcing as module
    from lightning_mf.objectives.flow_matching import FlowMatchingResult

    model = _model(grad_clip=1e-3)
    params = list(model.fake.parameters())
    square = lambda *args: FlowMatchingResult(errors={"video": sum(p.pow(2).sum() for p in params)[None, None]}, levels={"video": torch.zeros(1, 1)})  # noqa: E731
    monkeypatch.setattr(module, "teacher_forcing_flow_matching", square)
    monkeypatch.setattr(model, "manual_backward", lambda loss: loss.backward())
    before = [p.detach().clone() for p in params]
    model.train_fake(torch.optim.SGD(params, lr=1.0), [(0, *(None,) * 5)])
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before)))
    torch.testing.assert_close(moved, torch.tensor(1e-3), rtol=1e-4, atol=0)  # the raw gradient 2 w is far larger


def test_the_dmd_grid_is_chosen_by_the_control_generator(tiny_shards: Path) -> None:
    model = _model(history="real", dmd_steps=(1, 2, 4, 8))
    counts = []
    for global_seed in (0, 1, 2):
        torch.manual_seed(global_seed)
        stub = ConstantMulti(multi=0.7)
        model.fake = ConstantMulti(multi=-0.5)
        few, x0 = _stub_view(model, tiny_shards, stub)
        model.dmd(few, x0, torch.Generator().manual_seed(11))
        counts.append(sum(bool((d > 0).all()) for d, _ in stub.calls))  # Few jumps taken
    assert counts[0] == counts[1] == counts[2] == model._choose((1, 2, 4, 8), torch.Generator().manual_seed(11))


def test_the_fake_score_loss_is_accumulated_on_the_modules_device(monkeypatch) -> None:
    """(On a GPU the running total must live where the losses are: the meta device stands in for it here.)"""
    import lightning_mf.lit.mutual_forcing as module
    from lightning_mf.objectives.flow_matching import FlowMatchingResult

    model = _model().to("meta")
    weight = model.fake.towers.video.embed.weight
    monkeypatch.setattr(module, "teacher_forcing_flow_matching", lambda *a: FlowMatchingResult({"video": weight.sum()[None, None]}, {"video": weight.new_zeros(1, 1)}))
    monkeypatch.setattr(model, "manual_backward", lambda loss: loss.backward())
    monkeypatch.setattr(model, "clip_or_skip", lambda optimizer, clip: True)
    assert model.train_fake(torch.optim.SGD(model.fake.parameters(), lr=0.1), [(0, *(None,) * 5)]).device.type == "meta"


@pytest.mark.parametrize("off", [None, "fm", "sc", "dmd"])
def test_a_training_step_wires_the_rollout_into_every_term(tiny_shards: Path, monkeypatch, off: str | None) -> None:
    """The rollout gets the step's prefix, transcript and control generator; its history and levels (and the
    training window) reach flow matching and the Few-mode view that ShortCut and DMD use, its Few samples reach DMD;
    a term weighted 0 is not computed."""
    import lightning_mf.lit.mutual_forcing as module
    from lightning_mf.objectives.flow_matching import FlowMatchingResult

    model = _model(window=2, ctx_s=0.1, motion_weight={"video": 4.0}, **({f"{off}_weight": 0.0} if off else {}))
    seen: dict[str, tuple] = {}
    history, levels, made = object(), object(), object()
    one = model.net.towers.video.embed.weight.sum() * 0 + 1

    def rollout(x0, count, prefix, cond, ctl):
        seen["rollout"] = (x0, count, prefix, cond, ctl)
        return history, levels, made

    def fm(net, seq, x0, prefix, cond, noise, hist, window, lev, motion_weight):
        seen["fm"] = (net, hist, window, lev, noise, cond, motion_weight)
        return FlowMatchingResult({"video": one[None, None]}, {"video": torch.zeros(1, 1)})

    class View:
        def __init__(self, *args):
            seen["few"] = args

    monkeypatch.setattr(model, "rollout", rollout)
    monkeypatch.setattr(module, "teacher_forcing_flow_matching", fm)
    monkeypatch.setattr(module, "TeacherForced", View)
    monkeypatch.setattr(model, "shortcut", lambda few, x0, ctl: seen.update(sc=(few, ctl)) or {"video": one})
    monkeypatch.setattr(model, "dmd", lambda few, x0, ctl, made: seen.update(dmd=(few, ctl, made)) or ({"video": one}, None))
    monkeypatch.setattr(model, "prefix", lambda batch: "the prefix")
    monkeypatch.setattr(model, "condition", lambda batch, dropout=0.0: ("the transcript", dropout))
    _trainer(1).fit(model, _datamodule(tiny_shards))
    x0, count, prefix, cond, ctl = seen["rollout"]
    assert prefix == "the prefix" and cond == ("the transcript", 0.0) and isinstance(ctl, torch.Generator)
    assert x0["video"].shape[1] == count * model.seq.tokens_per_chunk("video")
    net, seq, hist, prefix, cond, lev, window = seen["few"]
    assert net is model.net and (hist, prefix, cond, lev, window) == (history, "the prefix", ("the transcript", 0.0), levels, 2)
    assert set(seen) == {"rollout", "few", "fm", "sc", "dmd"} - {off}  # a term weighted 0 is not computed
    for term in {"sc", "dmd"} - {off}:
        assert isinstance(seen[term][0], View) and seen[term][1] is ctl
    if off != "dmd":
        assert seen["dmd"][2] is made  # the rollout's Few samples, for DMD to reuse
    if off != "fm":
        assert seen["fm"] == (model.net, history, 2, levels, model.noise, ("the transcript", model.cfg_dropout), {"video": 4.0})


def _quadratic_terms(model: MutualForcing, monkeypatch) -> None:
    """Replace every loss term by ``sum w^2`` of the shared model: the same for any batch, with a known gradient."""
    import lightning_mf.lit.mutual_forcing as module
    from lightning_mf.objectives.flow_matching import FlowMatchingResult

    square = lambda: sum(p.pow(2).sum() for p in model.net.parameters())  # noqa: E731
    monkeypatch.setattr(model, "rollout", lambda *args: (None, None, None))
    monkeypatch.setattr(module, "TeacherForced", lambda *args: None)  # no distillation term uses it (sd_weight 0)
    monkeypatch.setattr(module, "teacher_forcing_flow_matching", lambda *args: FlowMatchingResult({"video": square()[None, None]}, {"video": torch.zeros(1, 1)}))


def test_manual_accumulation_averages_the_micro_batches_and_steps_once(tiny_shards: Path, monkeypatch) -> None:
    """Stage 3 accumulates by hand: 2 micro-batches of the same loss make the step of 1 (plain SGD, no clipping)."""
    steps = {}
    for accumulate in (1, 2):
        model = _model(fm_weight=1.0, sd_weight=0.0, accumulate=accumulate, grad_clip=None, ema_decay=None,
                       optimizer=partial(torch.optim.SGD, lr=0.1))
        _quadratic_terms(model, monkeypatch)
        before = [p.detach().clone() for p in model.net.parameters()]
        _trainer(1).fit(model, _datamodule(tiny_shards))
        steps[accumulate] = [p.detach() - b for p, b in zip(model.net.parameters(), before)]
    for one, two in zip(steps[1], steps[2]):
        torch.testing.assert_close(two, one)  # w <- w - 0.1 * 2 w once: a sum, or a step per micro-batch, differs
    assert any(s.abs().max() > 1e-3 for s in steps[1])


def test_the_learning_rate_schedule_steps_once_per_training_step(tiny_shards: Path, monkeypatch) -> None:
    model = _model(fm_weight=1.0, sd_weight=0.0, scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    _quadratic_terms(model, monkeypatch)
    trainer = _trainer(3)
    trainer.fit(model, _datamodule(tiny_shards))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-5 * 0.5**3)  # the paper's AdamW lr, halved 3 times


@pytest.mark.parametrize(("accumulate", "batches"), [(2, 3), (3, 4)])
def test_accumulation_must_divide_an_epochs_batches(tiny_shards: Path, accumulate: int, batches: int) -> None:
    data = AVDataModule(root=str(tiny_shards), spec=AVSpec(), window_chunks=3, batch_size=4, batches_per_epoch=batches)
    message = rf"model.accumulate={accumulate} does not divide the {batches} training batches .* set data.batches_per_epoch to a multiple"
    with pytest.raises(ValueError, match=message):
        _trainer(1).fit(_model(accumulate=accumulate), data)


def test_stage_3_refuses_ddp_that_expects_every_parameter_and_fp16_loss_scaling() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    model = _model()
    model.run_seed = 0  # as on a resumed run: no seed broadcast

    def start(strategy, precision=SimpleNamespace()) -> None:
        model._trainer = SimpleNamespace(strategy=strategy, precision_plugin=precision)
        model.on_fit_start()

    start(DDPStrategy(find_unused_parameters=True))
    start(SingleDeviceStrategy("cpu"), SimpleNamespace(scaler=None))
    ddp = r"^MutualForcing under DDP needs trainer.strategy: ddp_find_unused_parameters_true \(each backward uses only some"
    for strategy in (DDPStrategy(), DDPStrategy(find_unused_parameters=False)):
        with pytest.raises(ValueError, match=ddp + r" networks: shared model, then fake score\); or use ModelParallelStrategy \(FSDP2\)$"):
            start(strategy)
    fp16 = r"^MutualForcing supports precision 32 and bf16-mixed, not fp16 with loss scaling \(use bf16-mixed\)$"
    with pytest.raises(ValueError, match=fp16):
        start(SingleDeviceStrategy("cpu"), SimpleNamespace(scaler=torch.amp.GradScaler("cpu")))
