"""AtomicCheckpointIO: a process killed while writing a checkpoint leaves the previous one loadable and resumable."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mf.checkpoint import AtomicCheckpointIO
from lightning_mf.cli import MFLightningCLI
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.lit import UniModalPretraining
from lightning_mf.models import TowerConfig
from lightning_mf.spec import AVSpec

TOWER = TowerConfig(dim=32, depth=1, heads=2, vocab_size=32)

# Trains; the save of the step-2 checkpoint writes half of its bytes, then the process is SIGKILLed.
KILLED_DURING_SAVE = """
import os, signal, sys
import lightning as L, torch
from lightning.pytorch.callbacks import ModelCheckpoint
import lightning_mf.checkpoint as checkpoint_module
from lightning_mf.checkpoint import AtomicCheckpointIO
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.lit import UniModalPretraining
from lightning_mf.models import TowerConfig
from lightning_mf.spec import AVSpec

saves = []
real_save = torch.save

def dying_save(obj, file):
    saves.append(1)
    if len(saves) < 3:  # step 1: the epoch=0-step=1 file, then last.ckpt
        return real_save(obj, file)
    import io
    buffer = io.BytesIO()
    real_save(obj, buffer)
    file.write(buffer.getvalue()[: buffer.tell() // 2])
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

checkpoint_module.torch = type("T", (), {"save": staticmethod(dying_save)})
root = sys.argv[2]
model = UniModalPretraining(modality="video", tower=TowerConfig(dim=32, depth=1, heads=2, vocab_size=32))
data = AVDataModule(root=sys.argv[1], spec=AVSpec(), window_chunks=2, batch_size=2, batches_per_epoch=4)
trainer = L.Trainer(
    max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=0,
    plugins=[AtomicCheckpointIO()],
    callbacks=[ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1, save_last=True)],
)
trainer.fit(model, data)
"""


def test_kill_during_checkpoint_write_leaves_the_previous_one_loadable(tiny_shards: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_DURING_SAVE), str(tiny_shards), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=1.ckpt", "last.ckpt"]
    assert [p.name for p in tmp_path.glob(".*partial*")], "the killed save should have been writing beside the target"
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == 1

    model = UniModalPretraining(modality="video", tower=TOWER)
    data = AVDataModule(root=str(tiny_shards), spec=AVSpec(), window_chunks=2, batch_size=2, batches_per_epoch=4)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=0,
        enable_checkpointing=False, plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(model, data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 2


def test_atomic_save_round_trips_and_cleans_up(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint({"x": torch.arange(3)}, tmp_path / "sub" / "a.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "sub" / "a.ckpt")["x"], torch.arange(3))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.ckpt"]


def test_cli_trainer_saves_atomically(tiny_shards: Path, tmp_path: Path) -> None:
    cli = MFLightningCLI(
        L.LightningModule, AVDataModule, subclass_mode_model=True, run=False,
        args=[
            "--model=lightning_mf.lit.UniModalPretraining", f"--data.root={tiny_shards}",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu",
        ],
    )
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(cli.trainer.checkpoint_callback, ModelCheckpoint)
