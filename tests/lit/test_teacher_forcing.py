"""Stage 1/2 LightningModules: the loss, the layout it trains on, overfitting, EMA and tower loading."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_mf.lit import JointTraining, UniModalPretraining
from lightning_mf.lit.base import CodecConfig
from lightning_mf.models import TowerConfig
from lightning_mf.spec import AVSpec

TINY_TOWER = TowerConfig(dim=32, depth=2, heads=2, vocab_size=32)
SPEC = AVSpec()


def _batch(tiny_shards: Path, batch_size: int = 4, window_chunks: int = 3):
    from lightning_mf.data.datamodule import AVDataModule

    dm = AVDataModule(root=str(tiny_shards), spec=SPEC, window_chunks=window_chunks, batch_size=batch_size, batches_per_epoch=1)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_a_tiny_model_overfits_one_batch(tiny_shards: Path) -> None:
    torch.manual_seed(0)
    batch = _batch(tiny_shards, batch_size=2, window_chunks=2)
    model = UniModalPretraining("audio", tower=TINY_TOWER, ema_decay=None, cfg_dropout=0.0,
                                optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    optimizer = model.configure_optimizers()["optimizer"]
    generator_state = torch.get_rng_state()
    losses = []
    for _ in range(80):
        torch.set_rng_state(generator_state)  # the same noise every step: one fixed regression problem
        loss = model.flow_matching(batch).loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_loss_is_finite_per_modality_and_bucketed(tiny_shards: Path) -> None:
    batch = _batch(tiny_shards)
    model = JointTraining(tower=TINY_TOWER)
    result = model.flow_matching(batch, cfg_dropout=0.5)
    assert set(result.errors) == {"video", "audio"}
    assert result.errors["video"].shape == (4, 3 * 16) and result.errors["audio"].shape == (4, 3 * 8)
    buckets = result.by_bucket()
    assert buckets and all(torch.isfinite(v) for v in buckets.values())
    assert torch.isfinite(result.loss({"audio": 0.5}))


def test_the_ema_warms_up_then_follows_the_weights_at_its_decay_and_is_saved(tiny_shards: Path, tmp_path: Path) -> None:
    model = UniModalPretraining("video", tower=TINY_TOWER, ema_decay=0.99)
    initial = [p.clone() for p in model.ema.parameters()]  # the EMA starts as a copy of the random init
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(1.0)  # "trained" weights: init + 1, so the EMA is init + (1 - share of the init)

    def share() -> float:
        return 1.0 - torch.cat([(e - i).flatten() for e, i in zip(model.ema.parameters(), initial)]).mean().item()

    for _ in range(5):
        model.update_ema()
    warm = math.prod((1 + n) / (10 + n) for n in range(5))  # decays 0.1, 0.18, 0.25, ...: 5e-4 of the init left
    assert share() == pytest.approx(warm, rel=1e-3)
    for _ in range(155):
        model.update_ema()
    assert model.ema_updates == 160 and share() < 1e-6  # the demo's 160 steps; a fixed 0.99 would leave 0.99**160 = 20%
    model.ema_updates = 10_000  # past the warm-up: the configured decay
    before = [p.clone() for p in model.ema.parameters()]
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(1.0)
    model.update_ema()
    for old, new, online in zip(before, model.ema.parameters(), model.net.parameters()):
        torch.testing.assert_close(new, 0.99 * old + 0.01 * online)
    assert any(k.startswith("ema.towers.video.") for k in model.state_dict())
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["lightning_mf_state"]["ema_updates"] == 10_001  # a resumed run continues the warm-up count


def _stage1_checkpoint(tmp_path: Path, modality: str, tower: TowerConfig = TINY_TOWER) -> tuple[str, UniModalPretraining]:
    model = UniModalPretraining(modality, tower=tower, spec=SPEC)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path / f"{modality}.ckpt"
    trainer.save_checkpoint(path)
    return str(path), model


def test_joint_training_starts_from_the_stage1_towers(tmp_path: Path) -> None:
    video_path, video = _stage1_checkpoint(tmp_path, "video")
    audio_path, audio = _stage1_checkpoint(tmp_path, "audio")
    joint = JointTraining(video_ckpt=video_path, audio_ckpt=audio_path, tower=TINY_TOWER, spec=SPEC, init_from_ema=False)
    joint.setup("fit")
    for m, source in (("video", video), ("audio", audio)):
        for (name, a), b in zip(joint.net.towers[m].state_dict().items(), source.net.towers[m].state_dict().values()):
            assert torch.equal(a, b), name


def test_wrong_stage1_checkpoints_fail_before_training(tmp_path: Path) -> None:
    video_path, _ = _stage1_checkpoint(tmp_path, "video")
    with pytest.raises(FileNotFoundError, match="model.init_args.audio_ckpt=.*missing.ckpt does not exist"):
        JointTraining(video_ckpt=video_path, audio_ckpt=str(tmp_path / "missing.ckpt"), tower=TINY_TOWER).setup("fit")
    with pytest.raises(ValueError, match=r"model.init_args.audio_ckpt=.*is a checkpoint of \('video',\) towers, it has no \['audio'\]"):
        JointTraining(video_ckpt=video_path, audio_ckpt=video_path, tower=TINY_TOWER).setup("fit")
    with pytest.raises(ValueError, match="was trained with tower=.*make them equal"):
        JointTraining(video_ckpt=video_path, tower=TowerConfig(dim=64, depth=2, heads=2, vocab_size=32)).setup("fit")
    with pytest.raises(ValueError, match="was trained with spec="):
        JointTraining(video_ckpt=video_path, tower=TINY_TOWER, spec=AVSpec(frames_per_chunk=4)).setup("fit")


def test_codec_that_does_not_tile_a_chunk_is_rejected() -> None:
    with pytest.raises(ValueError, match="tubelet=4 does not divide spec.frames_per_chunk=2"):
        UniModalPretraining("video", tower=TINY_TOWER, codec=CodecConfig(tubelet=4))


def test_stages_1_and_2_weight_the_video_loss_by_its_motion_and_log_the_plain_errors(tiny_shards: Path) -> None:
    from lightning_mf.objectives.flow_matching import motion_weights

    batch = _batch(tiny_shards)
    model = JointTraining(tower=TINY_TOWER, motion_weight={"video": 3.0})
    torch.manual_seed(0)
    result = model.flow_matching(batch)
    expected = motion_weights(model.seq.encode(batch)["video"], model.seq.tokens_per_chunk("video"), 3.0)
    assert set(result.token_weights) == {"video"}  # audio keeps the plain mean
    torch.testing.assert_close(result.token_weights["video"], expected)
    assert float(expected.amax()) > 2.0  # real clips: some positions (the mouth) move far more than the rest
    torch.testing.assert_close(result.loss(), (expected * result.errors["video"]).mean() + result.errors["audio"].mean())


def test_a_motion_weight_for_a_modality_without_a_tower_is_named() -> None:
    with pytest.raises(ValueError, match=r"model.motion_weight names \['video'\], but the model's towers are \['audio'\]"):
        UniModalPretraining(modality="audio", tower=TINY_TOWER, motion_weight={"video": 3.0})
    assert UniModalPretraining(modality="video", tower=TINY_TOWER, motion_weight={"video": 3.0}).motion_weight == {"video": 3.0}


def test_the_ema_of_a_real_fit_is_its_closed_form_over_the_weights_each_step_made(tiny_shards: Path) -> None:
    from lightning_mf.data.datamodule import AVDataModule

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, *args) -> None:  # after the optimizer step and its EMA update
            weights.append([p.detach().clone() for p in module.net.parameters()])

    model = UniModalPretraining("audio", tower=TINY_TOWER, ema_decay=0.7, optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    weights = [[p.detach().clone() for p in model.net.parameters()]]
    dm = AVDataModule(root=str(tiny_shards), spec=SPEC, window_chunks=2, batch_size=2, batches_per_epoch=2)
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              limit_val_batches=0, enable_model_summary=False, callbacks=[Record()]).fit(model, dm)
    assert len(weights) == 3 and model.ema_updates == 2
    expected = weights[0]
    for n, step in enumerate(weights[1:]):  # decays 0.1 then 2/11 (the warm-up), both below 0.7
        decay = min(0.7, (1 + n) / (10 + n))
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, step)]
    moved = sum((w1 - w0).abs().sum() for w0, w1 in zip(weights[0], weights[2]))
    assert moved > 1.0  # the steps really changed the weights, so the EMA's weighting shows
    for e, p in zip(expected, model.ema.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)


def test_two_micro_batches_of_one_make_the_step_of_one_batch_of_two(tiny_shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradient accumulation (Lightning's ``accumulate_grad_batches``) vs a larger batch, through real fits: plain SGD,
    no clipping, every weight at std 0.2, so the step is the gradient itself and a sum over micro-batches instead of a
    mean doubles it. The noise is pinned per sample (a function of the sample's tokens; fixed levels per chunk), so
    both splits of the global batch see the same noise."""
    from torch.utils.data import DataLoader

    from lightning_mf.batch import AVBatch
    from lightning_mf.objectives.flow_matching import NoiseSchedule

    monkeypatch.setattr(torch, "randn_like", lambda x, **kwargs: torch.sin(7.0 * x + 1.0))
    monkeypatch.setattr(NoiseSchedule, "draw", lambda self, b, c, device: torch.linspace(0.2, 0.9, c, device=device).expand(b, c))
    batch = _batch(tiny_shards, batch_size=2, window_chunks=2)
    halves = [
        AVBatch(batch.video[i : i + 1], batch.audio[i : i + 1], batch.start_frame[i : i + 1], batch.keys[i : i + 1], batch.meta[i : i + 1])
        for i in range(2)
    ]

    def fit(batches: list[AVBatch], accumulate: int) -> dict[str, torch.Tensor]:
        model = UniModalPretraining("audio", tower=TINY_TOWER, ema_decay=None, cfg_dropout=0.0, grad_clip=None,
                                    optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
        torch.manual_seed(1)
        for p in model.net.parameters():  # gates and zero-initialised layers included: every path counts
            p.data.normal_(0.0, 0.2)
        initial = {k: v.clone() for k, v in model.net.state_dict().items()}
        L.Trainer(max_steps=1, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(model, DataLoader(batches, batch_size=None))
        return {k: v - initial[k] for k, v in model.net.state_dict().items()}

    accumulated, whole = fit(halves, accumulate=2), fit([batch], accumulate=1)
    assert max(v.abs().max() for v in whole.values()) > 1e-2  # a real step, far above the tolerance
    for name, step in whole.items():
        torch.testing.assert_close(accumulated[name], step, rtol=1e-4, atol=1e-6, msg=name)


def test_the_sampler_guides_generation_only_above_its_cfg_level(tiny_shards: Path) -> None:
    """``SamplerConfig.cfg_above`` reaches the stream: Multi 3 steps at shift 3 start at s = 1, 0.86, 0.6, so a level
    of 0.9 guides the first step only (4 evaluations a chunk, not 6), plus a cache write per branch and chunk."""
    from lightning_mf.lit.base import SamplerConfig

    model = JointTraining(tower=TINY_TOWER, ema_decay=None).eval()
    batch = _batch(tiny_shards, batch_size=1, window_chunks=2)
    calls = []
    model.net.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs.get("write", False)), with_kwargs=True)
    sampler = SamplerConfig(mode="multi", steps=3, cfg_scale=3.0, cfg_above=0.9)
    assert sampler.nfe() == 4
    model.generate(batch, num_chunks=2, sampler=sampler)
    assert calls.count(False) == 2 * 4 and calls.count(True) == 2 * (1 + 2)  # prefix + 2 chunks, in both caches
    assert sampler.cache_nfe() == 2  # what generate reports: the writes per chunk


def test_the_sampler_jumps_to_data_from_its_jump_level_in_generation(tiny_shards: Path) -> None:
    """``SamplerConfig.jump_from`` reaches the stream: Multi 4 steps from 0.5 on evaluate the network at s = 1, then
    three levels down to 0.5, the last one; Few mode refuses it."""
    from lightning_mf.lit.base import SamplerConfig

    model = JointTraining(tower=TINY_TOWER, ema_decay=None).eval()
    batch = _batch(tiny_shards, batch_size=1, window_chunks=1)
    levels, writes = [], []
    model.net.register_forward_hook(
        lambda module, args, kwargs, out: (writes if kwargs.get("write") else levels).append(float(args[0]["video"].s[0, 0])), with_kwargs=True,
    )
    sampler = SamplerConfig(mode="multi", steps=4, cfg_scale=1.0, jump_from=0.5)
    model.generate(batch, num_chunks=1, sampler=sampler)
    assert levels == pytest.approx([s for s, _, _ in sampler.grid()]) and len(levels) == 4
    assert len(writes) == sampler.cache_nfe() * (1 + 1) == 2  # without CFG one cache: the prefix and the chunk
    assert levels[0] == 1.0 and levels[-1] == pytest.approx(0.5) and min(levels[:-1]) > 0.5
    with pytest.raises(ValueError, match="jump_from=0.5 is for Multi mode"):
        SamplerConfig(mode="few", steps=4, jump_from=0.5)


def test_generation_writes_the_history_at_the_models_context_level_unless_the_sampler_names_one(tiny_shards: Path, tmp_path: Path) -> None:
    """A sampler without ``ctx_s`` (what ``evaluate`` and ``generate`` build from a mode string) writes each chunk to
    the cache at the model's ``ctx_s``, the level its history was trained at, which its checkpoint keeps; a sampler's
    own level, 0 included, wins. The first-frame prefix is always written clean."""
    from lightning_mf.lit import MutualForcing
    from lightning_mf.lit.base import SamplerConfig
    from lightning_mf.tools.evaluate import load_module, parse_mode

    batch = _batch(tiny_shards, batch_size=1, window_chunks=2)

    def written_levels(model, sampler) -> list[float]:
        writes = []
        hook = model.net.register_forward_hook(
            lambda module, args, kwargs, out: writes.append(float(args[0]["video"].s[0, 0])) if kwargs.get("write") else None,
            with_kwargs=True,
        )
        model.eval().generate(batch, num_chunks=2, sampler=sampler)
        hook.remove()
        return writes

    joint = JointTraining(tower=TINY_TOWER, ema_decay=None, ctx_s=0.2)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(joint)
    trainer.save_checkpoint(tmp_path / "joint.ckpt")
    joint = load_module(str(tmp_path / "joint.ckpt"))
    multi = parse_mode("multi2", cfg_scale=1.0, shift=3.0)
    assert multi.ctx_s is None and joint.ctx_s == 0.2
    assert written_levels(joint, multi) == pytest.approx([0.0, 0.2, 0.2])  # prefix, chunks 1 and 2
    assert written_levels(joint, SamplerConfig(steps=2, cfg_scale=1.0, ctx_s=0.0)) == [0.0, 0.0, 0.0]
    assert written_levels(JointTraining(tower=TINY_TOWER, ema_decay=None), multi) == [0.0, 0.0, 0.0]  # by default: clean
    stage3 = MutualForcing(tower=TINY_TOWER, ema_decay=None, ctx_s=0.3)  # its rollouts are written at 0.3 too
    assert written_levels(stage3, parse_mode("few2", cfg_scale=1.0, shift=3.0)) == pytest.approx([0.0, 0.3, 0.3])
    with pytest.raises(ValueError, match="ctx_s is a noise level in"):
        SamplerConfig(ctx_s=1.0)
    with pytest.raises(ValueError, match="model.ctx_s is a noise level"):
        JointTraining(tower=TINY_TOWER, ctx_s=-0.1)


def test_a_fit_warns_when_the_history_level_was_never_trained() -> None:
    """Streaming at ``ctx_s`` needs a training history noised that much: teacher forcing gets it from
    ``noise.context_noise``, stage 3's rollouts from writing their own history at ``ctx_s``."""
    import warnings

    from lightning_mf.lit import MutualForcing
    from lightning_mf.objectives.flow_matching import NoiseSchedule

    def warns(model) -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.setup("fit")
        return any("never gives its history" in str(w.message) for w in caught)

    assert warns(JointTraining(tower=TINY_TOWER, ctx_s=0.3))
    assert not warns(JointTraining(tower=TINY_TOWER, ctx_s=0.3, noise=NoiseSchedule(context_noise=0.5)))
    assert not warns(JointTraining(tower=TINY_TOWER))
    assert not warns(MutualForcing(tower=TINY_TOWER, ctx_s=0.3))  # its rollouts are written at 0.3 and trained on
    assert warns(MutualForcing(tower=TINY_TOWER, ctx_s=0.3, history="real"))


def test_delayed_history_rows_see_their_clip_late_and_keep_their_real_targets(tiny_shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_mf.lit.teacher_forcing as tf

    seen = []
    real_loss = tf.teacher_forcing_flow_matching
    monkeypatch.setattr(tf, "teacher_forcing_flow_matching", lambda *a, **k: seen.append((a, k)) or real_loss(*a, **k))
    batch = _batch(tiny_shards, batch_size=8, window_chunks=3)
    model = JointTraining(tower=TINY_TOWER, delayed_history=0.5)
    x0 = model.seq.encode(batch)
    per_chunk = SPEC.frames_per_chunk
    late = []  # the history delayed by 1, 2, 3 chunks: frame t shows frame t - delay, the first frame before it
    for chunks in (1, 2, 3):
        frames = torch.cat([batch.video[:, :1].expand(-1, chunks * per_chunk, -1, -1, -1), batch.video[:, : -chunks * per_chunk]], dim=1)
        late.append(model.seq.codecs["video"].encode(frames))
    assert all(not torch.equal(x, x0["video"]) for x in late)  # the clips move: a late history differs from the real one

    torch.manual_seed(0)
    model.train()
    model.flow_matching(batch)
    args, kwargs = seen[-1]
    history = kwargs["history"]
    assert torch.equal(args[2]["video"], x0["video"]) and torch.equal(args[2]["audio"], x0["audio"])  # targets: the real chunks
    assert torch.equal(history["audio"], x0["audio"])  # the audio history stays real
    delays = []
    for b in range(batch.size):
        matches = [d for d, x in enumerate([x0["video"], *late]) if torch.equal(history["video"][b], x[b])]
        assert len(matches) == 1  # each row wholly one history: the real one or one delay
        delays.append(matches[0])
    assert 0 < sum(d > 0 for d in delays) < batch.size  # about half of 8 rows delayed (seed 0)

    model.eval()  # validation keeps teacher forcing on the real history
    model.flow_matching(batch)
    assert seen[-1][1]["history"] is None
    model.train()
    model.delayed_history = 1.0
    for _ in range(6):
        model.flow_matching(batch)
        rows = seen[-1][1]["history"]["video"]
        assert all(not torch.equal(rows[b], x0["video"][b]) for b in range(batch.size))
    assert any(torch.equal(seen[-1][1]["history"]["video"][b], late[2][b]) for b in range(batch.size))  # L chunks: still


def test_delayed_history_is_a_fraction_needs_a_video_tower_and_stays_out_of_stage_3() -> None:
    with pytest.raises(ValueError, match=r"model.delayed_history is a fraction of rows, in \[0, 1\], got 1.5"):
        UniModalPretraining(modality="video", tower=TINY_TOWER, delayed_history=1.5)
    with pytest.raises(ValueError, match="delays the video history; the model has no video tower"):
        UniModalPretraining(modality="audio", tower=TINY_TOWER, delayed_history=0.5)
    from lightning_mf.lit import MutualForcing

    with pytest.raises(ValueError, match="delayed_history is for stages 1-2: stage 3 trains on its own rollouts"):
        MutualForcing(tower=TINY_TOWER, delayed_history=0.5)
