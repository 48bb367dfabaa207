"""`lightning-mf consolidate`: one checkpoint file from a sharded (FSDP2, ``ModelParallelStrategy``) checkpoint folder.

Sharded runs save distributed checkpoint folders. Resuming the same run reads them directly; everything else reads
one file: the next stage's ``video_ckpt``/``audio_ckpt``/``init_ckpt``, ``evaluate``, ``generate``, a 1-GPU resume.
Lightning's own converter (``python -m lightning.pytorch.utilities.consolidate_checkpoint``) expects FSDPStrategy's
layout and cannot unpickle our hyper-parameters; this command registers them and reads ModelParallelStrategy's.
"""

from __future__ import annotations

import re
from pathlib import Path

from lightning.fabric.utilities.load import _load_distributed_checkpoint

import lightning_mf.lit  # noqa: F401  (registers the config classes a checkpoint holds as safe to load)
from lightning_mf.checkpoint import AtomicCheckpointIO

__all__ = ["consolidate"]


def consolidate(*, ckpt: str, out: str | None = None) -> str:
    """Merge a sharded checkpoint folder into one file.

    Args:
        ckpt: the folder a sharded run wrote (e.g. ``runs/base/joint/checkpoints/last.ckpt``).
        out: the file to write (default: the folder's path + ``.consolidated``).
    """
    folder = Path(ckpt)
    if not folder.exists():
        raise FileNotFoundError(f"--ckpt {ckpt} does not exist; a sharded run writes its checkpoints/last.ckpt folder")
    if not folder.is_dir():
        raise ValueError(f"--ckpt {ckpt} is not a sharded checkpoint folder (a single-file checkpoint needs no consolidation)")
    target = Path(out) if out else folder.with_name(folder.name + ".consolidated")
    if target.exists():
        raise FileExistsError(f"--out {target} exists; remove it or choose another --out")
    checkpoint = _load_distributed_checkpoint(folder)  # ModelParallelStrategy's layout: optimizers as optimizer_<i>
    names = sorted((k for k in checkpoint if re.fullmatch(r"optimizer_\d+", k)), key=lambda k: int(k.split("_")[1]))
    checkpoint["optimizer_states"] = [checkpoint.pop(name) for name in names]
    AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    print(f"wrote {target}")
    return str(target)
