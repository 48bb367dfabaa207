"""Run by tests/e2e/test_ddp.py: a 2-process CPU DDP fit with GenerationEval (Lightning launches the second rank)."""

import sys

import lightning as L
import torch

from lightning_mf.callbacks import GenerationEval
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.lit import JointTraining
from lightning_mf.lit.base import SamplerConfig
from lightning_mf.models import TowerConfig
from lightning_mf.spec import AVSpec

if __name__ == "__main__":
    shards, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    spec = AVSpec()
    model = JointTraining(spec=spec, tower=TowerConfig(dim=32, depth=1, heads=2, vocab_size=32))
    dm = AVDataModule(root=shards, spec=spec, window_chunks=4, batch_size=2, batches_per_epoch=4)
    callback = GenerationEval(every_n_steps=2, num_clips=2, modes={"multi2": SamplerConfig(steps=2)}, vowel_classifier_clips=4, bootstraps=0)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        logger=L.pytorch.loggers.TensorBoardLogger(out, name="ddp", version=""), callbacks=[callback],
    )
    trainer.fit(model, datamodule=dm)
    print(f"rank {trainer.global_rank} done at step {trainer.global_step} with {len(callback.last)} eval scalars")
