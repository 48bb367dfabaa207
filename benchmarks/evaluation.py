"""Time of one GenerationEval pass on the tiny joint model (CPU): K clips, Multi mode with CFG.

    python benchmarks/evaluation.py --clips 4 --steps 50 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lightning_mf.callbacks import GenerationEval
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.data.shards import ShardSummary, synthetic_sources, write_shards
from lightning_mf.data.synthetic import PRESETS
from lightning_mf.lit import JointTraining
from lightning_mf.lit.base import SamplerConfig
from lightning_mf.models import TowerConfig

from report import machine, write_section


class _Trainer:
    """Just what GenerationEval.evaluate reads from a Trainer."""

    def __init__(self, datamodule: AVDataModule) -> None:
        self.datamodule, self.loggers, self.global_step = datamodule, [], 0
        self.is_global_zero = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--window-chunks", type=int, default=4)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    preset = PRESETS["tiny"]
    spec = preset.spec
    torch.manual_seed(0)
    model = JointTraining(spec=spec, tower=TowerConfig(dim=128, depth=4, heads=4))
    with tempfile.TemporaryDirectory() as tmp:
        summary = ShardSummary(fps=spec.fps, sample_rate=spec.sample_rate, height=spec.height, width=spec.width, clip_seconds=preset.clip_seconds, origin="bench")
        write_shards(synthetic_sources("tiny", 16), tmp, summary, val_fraction=0.5, progress=False)
        dm = AVDataModule(root=tmp, spec=spec, window_chunks=args.window_chunks, batch_size=args.clips)
        dm.setup("fit")
        sampler = SamplerConfig(steps=args.steps, cfg_scale=3.0)
        callback = GenerationEval(num_clips=args.clips, modes={"multi": sampler}, log_media=False)
        trainer = _Trainer(dm)
        started = time.perf_counter()
        callback.on_fit_start(trainer, model)
        setup = time.perf_counter() - started
        started = time.perf_counter()
        scalars = callback.evaluate(trainer, model)
        seconds = time.perf_counter() - started
    nfe = args.window_chunks * (sampler.nfe() + sampler.cache_nfe()) + sampler.cache_nfe()  # + the prefix's cache writes
    command = f"python benchmarks/evaluation.py --clips {args.clips} --steps {args.steps} --window-chunks {args.window_chunks}"
    body = (
        f"## Evaluation pass (GenerationEval, tiny joint model 4 x 128)\n\n`{command}` on {machine()}, {time.strftime('%Y-%m-%d')}: "
        f"{args.clips} clips of {args.window_chunks} chunks, Multi {args.steps} steps + CFG (about {nfe} forwards per clip batch), "
        f"then Fréchet distances (frames, clips, audio) and the vowel error rate.\n\n"
        f"| what | time |\n|---|---|\n| one evaluation pass | {seconds:.1f} s |\n| set-up once per fit (conditions + vowel classifier) | {setup:.1f} s |\n\n"
        f"Metrics of the untrained model (for scale only): " + ", ".join(f"{k.removeprefix('eval/')} {v:.3g}" for k, v in scalars.items())
    )
    print(write_section(args.write, "evaluation", body) if args.write else body)


if __name__ == "__main__":
    main()
