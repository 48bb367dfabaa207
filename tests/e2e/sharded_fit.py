"""Run by tests/e2e/test_sharded.py: a few training steps of one stage, either sharded over 2 CPU processes
(``ModelParallelStrategy``, FSDP2 over gloo; Lightning launches the second rank) or in 1 process with 2 micro-batches
per step. Both see the same global batches, so they must end with the same weights.

usage: python sharded_fit.py SHARDS OUT {video,joint,mutual_forcing} {sharded,single}[-bf16|-sgd] STEPS [CKPT]
(-bf16: bf16-mixed precision and activation checkpointing, the multi-node recipe; -sgd: plain SGD without clipping,
every weight drawn at std 0.2, so the scale of every gradient and every path through the model (gates, zero-initialised
layers) shows in the result: a gradient summed instead of averaged, which AdamW's normalisation hides, changes it.
The SGD runs are not resumed: their checkpoints hold the SGD factory, which a weights-only load refuses.)
Writes OUT/weights.pt (full tensors of every network), OUT/val_keys-<rank>.txt, a checkpoint per step under
OUT/ckpt and, with CKPT, resumes from it. An epoch is 2 steps. The joint stage also runs GenerationEval at the end
(OUT/eval.txt: its scalars on rank 0).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader

from lightning_mf.callbacks import GenerationEval
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.lit import JointTraining, MutualForcing, SamplerConfig, UniModalPretraining
from lightning_mf.models import TowerConfig
from lightning_mf.spec import AVSpec

TOWER = TowerConfig(dim=32, depth=2, heads=2, vocab_size=32)
RANKS, STEPS_PER_EPOCH = 2, 2


class FixedBatches(AVDataModule):
    """Validation from the shards as usual; training from a fixed list of batches: step k of an epoch is made of
    ``batches[k * RANKS + r]`` for r in ranks, taken by rank r when sharded, or as micro-batch r in one process."""

    def train_dataloader(self) -> DataLoader:
        stream = AVDataModule(root=str(self.root), spec=self.spec, window_chunks=self.window_chunks, batch_size=1)
        stream.setup("validate")
        batches = sorted(stream.val_dataloader(), key=lambda b: b.keys)  # 4 held-out windows, one per batch
        batches = [batches[i % len(batches)] for i in range(STEPS_PER_EPOCH * RANKS)]
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return DataLoader(batches[rank::world], batch_size=None)


class ValKeys(Callback):
    def __init__(self, out: Path) -> None:
        self.out, self.keys = out, []

    def on_validation_start(self, trainer: L.Trainer, module: Any) -> None:
        self.keys = []

    def on_validation_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, *args: Any) -> None:
        self.keys += batch.keys

    def on_validation_end(self, trainer: L.Trainer, module: Any) -> None:
        (self.out / f"val_keys-{trainer.global_rank}.txt").write_text("\n".join(self.keys))


def build(stage: str, micro_batches: int, checkpointing: bool, sgd: bool) -> L.LightningModule:
    common: dict[str, Any] = {"tower": TOWER, "activation_checkpointing": checkpointing}
    if sgd:
        common.update(optimizer=partial(torch.optim.SGD, lr=0.05), grad_clip=None)
    if stage == "video":
        return UniModalPretraining(modality="video", **common)
    if stage == "joint":
        return JointTraining(**common)
    fake = {"fake_optimizer": common["optimizer"]} if sgd else {}
    return MutualForcing(chunks=(1, 2), rollout_steps=(1, 2), dmd_steps=(1,), accumulate=micro_batches, **fake, **common)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


if __name__ == "__main__":
    shards, out, stage, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    steps, ckpt = int(sys.argv[5]), (sys.argv[6] if len(sys.argv) > 6 else None)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(3)
    torch.manual_seed(0)  # the same initial weights in every process
    sharded, bf16, sgd = mode.startswith("sharded"), mode.endswith("-bf16"), mode.endswith("-sgd")
    model = build(stage, 1 if sharded else RANKS, checkpointing=bf16, sgd=sgd)
    if stage == "mutual_forcing" or sgd:
        torch.manual_seed(1)
        for p in model.net.parameters():  # zero-initialised outputs would make every distillation term 0
            p.data.normal_(0.0, 0.2) if sgd else p.data.add_(0.05 * torch.randn_like(p))
        for copy in (model.ema, getattr(model, "fake", None)):
            if copy is not None:
                copy.load_state_dict(model.net.state_dict())
    data = FixedBatches(root=shards, spec=AVSpec(), window_chunks=2, batch_size=1, val_batch_size=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=RANKS if sharded else 1, precision="bf16-mixed" if bf16 else "32-true",
        strategy=ModelParallelStrategy(data_parallel_size=RANKS, tensor_parallel_size=1) if sharded else "auto",
        accumulate_grad_batches=1 if sharded or stage == "mutual_forcing" else RANKS,
        max_steps=steps, val_check_interval=STEPS_PER_EPOCH * (1 if sharded else RANKS), check_val_every_n_epoch=None,
        num_sanity_val_steps=0, use_distributed_sampler=False,
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
        callbacks=[ValKeys(out), ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=1, save_top_k=-1, save_last=True)],
    )
    evaluation = GenerationEval(every_n_steps=1000, num_clips=2, modes={"multi2": SamplerConfig(steps=2)}, vowel_classifier_clips=0, bootstraps=0)
    if stage == "joint":
        trainer.callbacks.append(evaluation)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt)
    if trainer.global_rank == 0 and stage == "joint":
        (out / "eval.txt").write_text("\n".join(f"{k} {v}" for k, v in sorted(evaluation.last.items())))
    weights = {name: full(value).detach().clone() for name, value in model.state_dict().items()}
    if trainer.global_rank == 0:
        torch.save(weights, out / "weights.pt")
    print(f"rank {trainer.global_rank} finished at step {trainer.global_step}")
