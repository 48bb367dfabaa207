"""Curves of the transcript probe over training: does a video run follow the transcript, and from which step?

    python benchmarks/transcript_probe.py runs/tiny/video_pretrain [more runs] --data data/tiny --png docs/figures/probe.png

For every checkpoint ``*step=N.ckpt`` of each run (``ModelCheckpoint(save_top_k=-1)`` keeps them), the probe of
``lightning_mf.metrics.transcript_probe`` on the first ``--clips`` whole held-out clips: r of the model's clean
estimate near pure noise with the transcript given (another clip's), with the clip its frames came from, and with a
still history (the first frame repeated), and how far its mouth moves. Prints a
table and a JSON line per checkpoint; ``--png`` draws each r against step and against wall-clock (the run's
TensorBoard events time its steps).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from lightning_mf.callbacks.generation_eval import take_windows
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.data.shards import read_index
from lightning_mf.metrics.transcript_probe import transcript_probe
from lightning_mf.tools.evaluate import load_module


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (run / "checkpoints").glob("*.ckpt"):
        match = re.search(r"step=(\d+)", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def wall_clock(run: Path) -> dict[int, float]:
    """Training seconds since the first logged step, per logged step (from ``train/loss`` in the run's events).

    A run resumed with ``--ckpt_path`` writes one events file per piece into the same folder. The time between pieces
    is not training, so each piece is stitched on after the last step logged before its first, at the piece's own
    seconds per step; steps a piece logs again (resumed from an earlier checkpoint) take the later piece's times."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pieces = []
    for path in sorted(run.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        if "train/loss" in events.Tags()["scalars"]:
            pieces.append([(s.step, s.wall_time) for s in events.Scalars("train/loss")])
    clock: dict[int, float] = {}
    for piece in sorted(pieces):  # by first step
        (first, start), (last, end) = piece[0], piece[-1]
        per_step = (end - start) / (last - first) if last > first else 0.0
        clock = {step: seconds for step, seconds in clock.items() if step < first}
        offset = clock[max(clock)] + (first - max(clock)) * per_step if clock else 0.0
        clock |= {step: offset + wall - start for step, wall in piece}
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", default="data/tiny")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--levels", default="1.0,0.9")
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    levels = tuple(float(x) for x in args.levels.split(","))
    frames = read_index(args.data)["frames_per_clip"]
    curves: dict[str, list[dict[str, float]]] = {}
    clips = None
    for run in args.runs:
        clock = wall_clock(run)
        for step, path in checkpoints(run):
            module = load_module(str(path))
            if clips is None:
                data = AVDataModule(root=args.data, spec=module.spec, window_chunks=frames // module.spec.frames_per_chunk, batch_size=args.clips)
                data.setup("validate")
                clips = take_windows(data.val_dataloader(), args.clips)
            near = [t for t in clock if t <= step]
            row = {"run": str(run), "step": step, "seconds": clock[max(near)] if near else float("nan")}
            row |= transcript_probe(module, clips, levels)
            curves.setdefault(str(run), []).append(row)
            print(json.dumps(row), flush=True)
    if not curves:
        where = [str(run / "checkpoints") for run in args.runs]
        raise SystemExit(f"no checkpoint named '*step=N.ckpt' under {where}; keep them with ModelCheckpoint(save_top_k=-1)")
    keys = [k for k in next(iter(curves.values()))[0] if re.match(r"s[\d.]+_", k)]
    print(f"\n| run | step | seconds | {' | '.join(keys)} |\n|---|---|---|{'---|' * len(keys)}")
    for rows in curves.values():
        for row in rows:
            print(f"| {row['run']} | {row['step']} | {row['seconds']:.0f} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    if args.png:
        plot(curves, keys, args.png)


def plot(curves: dict[str, list[dict[str, float]]], keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(keys), 2, figsize=(10, 2.6 * len(keys)), squeeze=False)
    for i, key in enumerate(keys):
        for run, rows in curves.items():
            for j, x in enumerate(("step", "seconds")):
                axes[i, j].plot([r[x] for r in rows], [r[key] for r in rows], marker="o", label="/".join(Path(run).parts[-2:]))
                axes[i, j].set_xlabel("training step" if x == "step" else "wall-clock (s)")
                axes[i, j].set_ylabel(f"mouth motion, px ({key})" if key.endswith("_motion") else f"r ({key})")
                axes[i, j].axhline(0, color="grey", lw=0.5)
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
