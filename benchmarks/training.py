"""Training step time, tokens/s and peak memory of the tiny stage configs (CPU), one subprocess per config.

    python benchmarks/training.py --steps 20 --write docs/benchmarks.md

A step is forward + backward + AdamW on one batch of the config's size (8 windows of 4 chunks); tokens are
the teacher-forcing sequence ([prefix ; clean ; noisy]) summed over modalities. Peak memory is the process's
maximum resident set size, so it includes Python, torch and the data (a CPU proxy for the GPU figure).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from report import machine, write_section

REPO = Path(__file__).resolve().parents[1]
STAGES = ("video_pretrain", "audio_pretrain", "joint")


def measure(stage: str, steps: int) -> dict[str, float]:
    from lightning_mf.data.datamodule import AVDataModule
    from lightning_mf.data.shards import ShardSummary, synthetic_sources, write_shards
    from lightning_mf.data.synthetic import PRESETS
    from lightning_mf.lit import CodecConfig, JointTraining, UniModalPretraining
    from lightning_mf.models import TowerConfig
    from lightning_mf.objectives import NoiseSchedule
    from lightning_mf.spec import AVSpec

    config = yaml.safe_load((REPO / "configs" / "tiny" / f"{stage}.yaml").read_text())
    args, data = config["model"]["init_args"], config["data"]
    spec = AVSpec(**data["spec"])
    common = dict(
        spec=spec, tower=TowerConfig(**args["tower"]), codec=CodecConfig(**args["codec"]), ema_decay=args["ema_decay"],
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-4),
    )
    model = UniModalPretraining(args["modality"], **common) if "modality" in args else JointTraining(noise=NoiseSchedule(**args["noise"]), **common)
    with tempfile.TemporaryDirectory() as tmp:
        preset = PRESETS["tiny"]
        summary = ShardSummary(fps=spec.fps, sample_rate=spec.sample_rate, height=spec.height, width=spec.width, clip_seconds=preset.clip_seconds, origin="bench")
        write_shards(synthetic_sources("tiny", 16), tmp, summary, val_fraction=0.0, progress=False)
        dm = AVDataModule(root=tmp, spec=spec, window_chunks=data["window_chunks"], batch_size=data["batch_size"], batches_per_epoch=1)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
    optimizer = model.configure_optimizers()["optimizer"]
    times = []
    for _ in range(steps + 3):
        started = time.perf_counter()
        loss = model.flow_matching(batch, model.cfg_dropout).loss()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.net.parameters(), model.grad_clip)
        optimizer.step()
        model.update_ema()
        times.append(time.perf_counter() - started)
    step = statistics.median(times[3:])
    chunks = data["window_chunks"]
    tokens = sum(2 * chunks * model.seq.tokens_per_chunk(m) for m in model.seq.modalities) + (16 if "video" in model.seq.modalities else 0)
    return {
        "step_s": step, "tokens_per_step": tokens * batch.size, "tokens_per_s": tokens * batch.size / step,
        "params_m": sum(p.numel() for p in model.net.parameters()) / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--one", choices=STAGES, help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    rows = []
    for stage in STAGES:
        out = subprocess.run([sys.executable, __file__, "--one", stage, "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(f"| {stage} | {r['params_m']:.2f} M | {r['tokens_per_step']} | {r['step_s'] * 1e3:.0f} ms | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} MB |")
    command = f"python benchmarks/training.py --steps {args.steps}"
    table = "\n".join(["| config | params (net) | tokens/step | step | tokens/s | peak RSS |", "|---|---|---|---|---|---|"] + rows)
    body = (
        f"## Training step, tiny configs (batch 8 x 4 chunks, teacher forcing)\n\n`{command}` on {machine()}, "
        f"{time.strftime('%Y-%m-%d')}; median of {args.steps} steps after 3 warm-up steps (forward, backward, clip, AdamW, EMA).\n\n{table}"
    )
    print(write_section(args.write, "training", body) if args.write else body)


if __name__ == "__main__":
    main()
