"""Shard writing and AVDataModule throughput on the tiny synthetic preset.

    python benchmarks/dataloader.py --clips 256 --batches 40 --write docs/benchmarks.md

Prints a markdown table; with --write, replaces the ``dataloader`` section of that file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.data.shards import ShardSummary, synthetic_sources, write_shards
from lightning_mf.data.synthetic import PRESETS

from report import machine, write_section


def shard_writing(out: Path, clips: int) -> float:
    preset = PRESETS["tiny"]
    summary = ShardSummary(
        fps=preset.spec.fps, sample_rate=preset.spec.sample_rate, height=preset.spec.height, width=preset.spec.width,
        clip_seconds=preset.clip_seconds, origin="benchmark",
    )
    started = time.perf_counter()
    write_shards(synthetic_sources("tiny", clips), out, summary, val_fraction=0.1, max_clips_per_shard=max(1, clips // 8), progress=False)
    return clips / (time.perf_counter() - started)


def loading(root: Path, workers: int, batches: int, batch_size: int, warmup: int = 3) -> float:
    dm = AVDataModule(root=str(root), spec=PRESETS["tiny"].spec, batch_size=batch_size, num_workers=workers, batches_per_epoch=batches + warmup)
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())
    for _ in range(warmup):  # worker start-up and shuffle-buffer fill are not steady-state throughput
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tiny"
        rows = [("shard writing (synthesise + encode + tar)", f"{shard_writing(root, args.clips):.0f} clips/s")]
        for workers in (0, 2):
            rate = loading(root, workers, args.batches, args.batch_size)
            rows.append((f"AVDataModule train, {workers} workers, batch {args.batch_size}", f"{rate:.0f} clips/s"))
    command = f"python benchmarks/dataloader.py --clips {args.clips} --batches {args.batches} --batch-size {args.batch_size}"
    table = "\n".join(["| what | throughput |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
    body = f"## Data pipeline (tiny preset)\n\n`{command}` on {machine()}, {time.strftime('%Y-%m-%d')}:\n\n{table}"
    print(write_section(args.write, "dataloader", body) if args.write else body)


if __name__ == "__main__":
    main()
