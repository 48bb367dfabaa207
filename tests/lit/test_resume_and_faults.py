"""Exact resume (weights, optimizers, EMA, data position, noise) and the NaN/Inf step guard, on one CPU process."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.lit import MutualForcing, UniModalPretraining
from lightning_mf.models import TowerConfig
from lightning_mf.spec import AVSpec
from tests.models.tiny_models import randomize

TOWER = TowerConfig(dim=32, depth=2, heads=2, vocab_size=32)


class Record(Callback):
    """Per step: the loss, and the keys of the batch (the data position)."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.keys: dict[int, list[str]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[trainer.global_step] = float(loss)
        self.keys[trainer.global_step] = list(batch.keys)


def warmup(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=10)


def _model(stage: str) -> L.LightningModule:
    if stage == "video":
        return UniModalPretraining(modality="video", tower=TOWER, scheduler=warmup)
    model = MutualForcing(tower=TOWER, chunks=(1, 3), rollout_steps=(1, 2), dmd_steps=(1, 2), scheduler=warmup)
    randomize(model.net, std=0.05, seed=1)  # zero-initialised outputs would make every distillation term 0
    for copy in (model.ema, model.fake):
        copy.load_state_dict(model.net.state_dict())
    return model


def _fit(
    tiny_shards: Path, root: Path, stage: str, steps: int, ckpt: str | None = None, workers: int = 0, seed: int = 7
) -> tuple[L.LightningModule, Record]:
    L.seed_everything(seed)
    model, record = _model(stage), Record()
    data = AVDataModule(
        root=str(tiny_shards), spec=AVSpec(), window_chunks=3, batch_size=2, batches_per_epoch=4, num_workers=workers
    )
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=root,
        callbacks=[record, ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1, save_last=True)],
    )
    trainer.fit(model, data, ckpt_path=ckpt, weights_only=False)  # the hparams hold this file's warm-up function
    return model, record


@pytest.mark.parametrize(("stage", "workers", "split"), [("video", 0, 3), ("video", 2, 3), ("video", 0, 4), ("mutual_forcing", 0, 3)])
def test_interrupt_and_resume_equals_straight_run(tiny_shards: Path, tmp_path: Path, stage: str, workers: int, split: int) -> None:
    """6 steps straight == ``split`` steps, then a new Trainer (another global seed) resumed from that checkpoint for the rest: bitwise
    weights (net, EMA, fake score), optimizer and warm-up scheduler states, loss curve and batches. Epochs are 4
    batches: a resume at step 3 lands mid-epoch and crosses an epoch boundary afterwards; at step 4 it starts the
    next epoch."""
    straight, straight_log = _fit(tiny_shards, tmp_path / "a", stage, 6, workers=workers)
    _fit(tiny_shards, tmp_path / "b", stage, split, workers=workers)
    # resumed under another global seed: the run's seeds come from the checkpoint, not from the new process
    resumed, resumed_log = _fit(tiny_shards, tmp_path / "b", stage, 6, ckpt=str(tmp_path / "b" / "ckpt" / "last.ckpt"), workers=workers, seed=8)

    assert sorted(resumed_log.losses) == list(range(split + 1, 7))
    for step in range(split + 1, 7):
        assert resumed_log.keys[step] == straight_log.keys[step]
        assert resumed_log.losses[step] == straight_log.losses[step]
    mine, theirs = straight.state_dict(), resumed.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    for a, b in zip(straight.trainer.optimizers, resumed.trainer.optimizers):
        for sa, sb in zip(a.state.values(), b.state.values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    (warm_a,), (warm_b,) = straight.trainer.lr_scheduler_configs, resumed.trainer.lr_scheduler_configs
    assert warm_a.scheduler.state_dict() == warm_b.scheduler.state_dict()
    assert warm_b.scheduler.last_epoch == 6  # stepped once per optimizer step, also by hand in Mutual Forcing


def test_resumed_checkpoint_holds_run_seed_and_data_position(tiny_shards: Path, tmp_path: Path) -> None:
    _fit(tiny_shards, tmp_path, "video", 6)
    checkpoint = torch.load(tmp_path / "ckpt" / "epoch=1-step=5.ckpt", weights_only=False)
    assert checkpoint["lightning_mf_state"] == {"run_seed": 7, "nonfinite_steps": 0, "batch_layout": [1, 1], "ema_updates": 5}
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 2, "consumed": 1}]


class PoisonedVideo(UniModalPretraining):
    """Makes the loss NaN at the given optimizer steps."""

    def __init__(self, poisoned: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(modality="video", tower=TOWER, **kwargs)
        self.poisoned = poisoned

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * math.nan if self.global_step in self.poisoned else loss


def _poisoned_fit(tiny_shards: Path, root: Path, poisoned: tuple[int, ...], limit: int | None, steps: int = 5):
    L.seed_everything(0)
    model = PoisonedVideo(poisoned, max_nonfinite_steps=limit)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(root), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0, log_every_n_steps=1,
    )
    data = AVDataModule(root=str(tiny_shards), spec=AVSpec(), window_chunks=2, batch_size=2, batches_per_epoch=8)
    return model, trainer, data


def test_nonfinite_step_is_skipped_counted_and_logged(tiny_shards: Path, tmp_path: Path) -> None:
    model, trainer, data = _poisoned_fit(tiny_shards, tmp_path, poisoned=(2,), limit=3)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Snap(Callback):
        def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
            snapshots[trainer.global_step] = {k: v.clone() for k, v in module.state_dict().items()}

    trainer.callbacks.append(Snap())
    with pytest.warns(UserWarning, match="step 2: NaN/Inf gradients, step skipped"):
        trainer.fit(model, data)
    assert trainer.global_step == 5 and model.nonfinite_steps == 1
    before, after = snapshots[2], snapshots[3]  # the poisoned step ran between these
    assert all(torch.equal(before[k], after[k]) for k in before), "a NaN step changed the weights or the EMA"
    assert any(not torch.equal(after[k], snapshots[4][k]) for k in after), "training did not go on after the NaN"
    assert all(torch.isfinite(v).all() for v in snapshots[5].values())
    logged = (Path(trainer.logger.log_dir) / "metrics.csv").read_text()
    assert "train/nonfinite_steps" in logged.splitlines()[0]


def test_too_many_nonfinite_steps_stop_with_a_clear_message(tiny_shards: Path, tmp_path: Path) -> None:
    model, trainer, data = _poisoned_fit(tiny_shards, tmp_path, poisoned=(1, 2, 3), limit=1)
    with pytest.raises(RuntimeError, match=r"2 optimizer steps had NaN/Inf gradients \(the last at step 2\), more than model.max_nonfinite_steps=1"):
        trainer.fit(model, data)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: MutualForcing(tower=TOWER), r"written by lightning_mf.lit.teacher_forcing.UniModalPretraining, this run is lightning_mf.lit.mutual_forcing.MutualForcing"),
        (lambda: UniModalPretraining(modality="video", tower=TowerConfig(dim=64, depth=2, heads=2, vocab_size=32)), r"the checkpoint was trained with tower=.*dim=32.*this model has tower=.*dim=64"),
    ],
)
def test_resuming_from_another_stage_or_shape_fails_before_training(tiny_shards: Path, tmp_path: Path, model: Any, message: str) -> None:
    _fit(tiny_shards, tmp_path, "video", 1)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    data = AVDataModule(root=str(tiny_shards), spec=AVSpec(), window_chunks=3, batch_size=2, batches_per_epoch=4)
    with pytest.raises(ValueError, match=message):
        trainer.fit(model(), data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), weights_only=False)
    assert trainer.global_step == 0


def test_mutual_forcing_under_plain_ddp_names_the_strategy_that_works(tiny_shards: Path, tmp_path: Path) -> None:
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", devices=1, strategy="ddp", logger=False, enable_progress_bar=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )
    data = AVDataModule(root=str(tiny_shards), spec=AVSpec(), window_chunks=3, batch_size=2, batches_per_epoch=4)
    environment = dict(os.environ)
    try:
        with pytest.raises(ValueError, match="needs trainer.strategy: ddp_find_unused_parameters_true .* or use ModelParallelStrategy"):
            trainer.fit(_model("mutual_forcing"), data)
    finally:  # the 1-process group and its MASTER_PORT must not leak into later multi-process tests
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)
