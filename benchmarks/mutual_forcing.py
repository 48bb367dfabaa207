"""The paper's headline on the tiny preset: Few 1/2/4/8 vs Multi 50 + CFG of the Mutual Forcing model, the three
baselines at 4 jumps, and the stage-3 training step time. Run ``benchmarks/headline.sh`` for the whole pipeline
(stages 1 -> 2 -> 3 and the baselines), then:

    python benchmarks/mutual_forcing.py steps --steps 10 --write docs/benchmarks.md
    python benchmarks/mutual_forcing.py headline --runs runs/tiny --data data/bench --seeds 0 1 2 --write docs/benchmarks.md
    python benchmarks/mutual_forcing.py long --runs runs/tiny --data data/bench --seconds 25 --write docs/benchmarks.md

``headline`` scores every checkpoint with ``lightning-mf evaluate``'s code (same held-out conditions, one
generation seed per repeat) and reports mean +- std over the seeds, NFE per chunk (CFG counts 2) and the
generation wall-clock relative to Multi 50 + CFG. ``steps`` times one training step (rollout, losses, both
optimizers, EMA) of each stage-3 config at the tiny shapes with the config's batch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from report import machine, write_section

REPO = Path(__file__).resolve().parents[1]
STAGE3 = ("mutual_forcing", "baseline_shortcut_tf", "baseline_dmd_tf", "baseline_dmd_sf")
MF_MODES = ("few1", "few2", "few4", "few8", "multi50")
METRICS = (
    ("fd_frames", "FD frames"), ("fd_clips", "FD clips"), ("fd_motion", "FD motion"), ("fd_audio", "FD audio"),
    ("video_timing_r", "video timing r"), ("audio_timing_r", "audio timing r"), ("oracle_sync_corr", "oracle sync r"),
    ("lse_c", "LSE-C"), ("lse_d", "LSE-D"), ("vowel_error_rate", "vowel err"), ("speech_frame_error", "frame err"),
    ("drift_mean", "drift"), ("flicker", "flicker"), ("mouth_motion", "mouth motion"),
)
REFERENCES = ("real (held-out)", "real, other characters", "copy first frame", "copy first frame + grain")


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self.started)


def step_times(steps: int) -> list[str]:
    from lightning.pytorch.cli import instantiate_class

    from lightning_mf.data.datamodule import AVDataModule
    from lightning_mf.data.shards import ShardSummary, synthetic_sources, write_shards
    from lightning_mf.data.synthetic import PRESETS
    from lightning_mf.lit import CodecConfig, MutualForcing
    from lightning_mf.models import TowerConfig
    from lightning_mf.objectives import NoiseSchedule
    from lightning_mf.spec import AVSpec

    rows = []
    # Mutual Forcing also with the paper's DMD term (the tiny default drops it since stop 34); each DMD config with a
    # rolled-out history also as it was before DMD reused the rollout, and Mutual Forcing with the guided teacher it
    # had before issue 16's stage-3 fix (the same run, so the step times compare)
    with_dmd = {"sc_weight": 2 / 3, "dmd_weight": 1 / 3}
    plan = [(name, {}) for name in STAGE3] + [("mutual_forcing", with_dmd)]
    plan += [("mutual_forcing", with_dmd | {"dmd_sample": "fresh"}), ("baseline_dmd_sf", {"dmd_sample": "fresh"})]
    plan.append(("mutual_forcing", with_dmd | {"distill_cfg": 3.0}))
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in plan:
            config = yaml.safe_load((REPO / "configs" / "tiny" / f"{name}.yaml").read_text())
            args, data = dict(config["model"]["init_args"]) | overrides, config["data"]
            spec = AVSpec(**data["spec"])
            if not any(Path(tmp).glob("*.tar")):
                summary = ShardSummary(fps=spec.fps, sample_rate=spec.sample_rate, height=spec.height, width=spec.width, clip_seconds=PRESETS["tiny"].clip_seconds, origin="bench")
                write_shards(synthetic_sources("tiny", 32), tmp, summary, val_fraction=0.0, progress=False)
            for key in ("init_ckpt", "sampler", "tower", "codec", "noise", "optimizer", "fake_optimizer"):
                args.pop(key, None)
            L.seed_everything(0)
            given = config["model"]["init_args"]
            model = MutualForcing(
                spec=spec, tower=TowerConfig(**given["tower"]), codec=CodecConfig(**given["codec"]), noise=NoiseSchedule(**given["noise"]),
                optimizer=partial(instantiate_class, init=given["optimizer"]),
                fake_optimizer=partial(instantiate_class, init=given["fake_optimizer"]), **args,
            )
            dm = AVDataModule(root=tmp, spec=spec, window_chunks=data["window_chunks"], batch_size=data["batch_size"], batches_per_epoch=steps + 3)
            timer = StepTimer()
            trainer = L.Trainer(
                max_steps=steps + 3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                limit_val_batches=0, enable_model_summary=False, callbacks=[timer],
            )
            trainer.fit(model, dm)
            chunks = args.get("chunks") or [data["window_chunks"]] * 2
            sample = args.get("dmd_sample", "rollout") if args["history"] == "rollout" and args["dmd_weight"] > 0 else "-"
            rows.append(
                f"| {name} | {args['history']} | {args['sc_weight']:.2g} : {args['dmd_weight']:.2g} | {sample} | {args['distill_cfg']:g} | {chunks[0]}-{chunks[1]} | "
                f"{statistics.median(timer.times[3:]) * 1e3:.0f} ms |"
            )
    return rows


def headline(runs: Path, data: str, seeds: list[int], clips: int, syncnet: str | None) -> tuple[str, str]:
    from lightning_mf.tools.evaluate import evaluate

    plan = [("mutual_forcing", mode) for mode in MF_MODES] + [(name, "few4") for name in STAGE3[1:]] + [("joint", "multi50")]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    reference: dict[str, list[dict[str, float]]] = {row: [] for row in REFERENCES}
    for name in dict.fromkeys(n for n, _ in plan):
        ckpt = runs / name / "checkpoints" / "last.ckpt"
        modes = tuple(m for n, m in plan if n == name)
        for seed in seeds:
            with contextlib.redirect_stdout(io.StringIO()):
                rows = evaluate(ckpt=str(ckpt), data=data, modes=modes, num_clips=clips, syncnet=syncnet, seed=seed, cfg_scale=3.0)
            if name == "mutual_forcing":
                for row in REFERENCES:
                    reference[row].append(rows[row])
            for mode in modes:
                results.setdefault((name, mode), []).append(rows[mode])
            print(f"{name} seed {seed}: done", flush=True)
    base_seconds = statistics.mean(r["generate_seconds"] for r in results[("mutual_forcing", "multi50")])
    present = [(k, label) for k, label in METRICS if k in reference[REFERENCES[0]][0]]
    header = "| model | mode | NFE/chunk | gen time | " + " | ".join(label for _, label in present) + " |"
    lines = [header, "|" + "---|" * (4 + len(present))]
    for row, scores in reference.items():  # the ceiling and the floors of every metric
        lines.append(f"| {row} | - | - | - | " + " | ".join(_cell(scores, k) for k, _ in present) + " |")
    for (name, mode), rows in results.items():
        seconds = statistics.mean(r["generate_seconds"] for r in rows)
        cells = [_cell(rows, k) for k, _ in present]
        lines.append(f"| {name} | {mode} | {int(rows[0]['nfe_per_chunk'])} | {seconds:.2f} s ({base_seconds / seconds:.1f}x) | " + " | ".join(cells) + " |")
    command = f"python benchmarks/mutual_forcing.py headline --runs {runs} --data {data} --seeds {' '.join(map(str, seeds))} --clips {clips}"
    return command, "\n".join(lines)


def held_out(module: Any, data: str, clips: int, window_chunks: int) -> Any:
    """The first ``clips`` held-out windows of ``window_chunks`` chunks of ``data`` (an AVBatch): the conditions of a
    long stream (first frames, transcripts, ground truth)."""
    from lightning_mf.callbacks.generation_eval import take_windows
    from lightning_mf.data.datamodule import AVDataModule

    dm = AVDataModule(root=data, spec=module.spec, window_chunks=window_chunks, batch_size=clips)
    dm.setup("validate")
    return take_windows(dm.val_dataloader(), clips)


def long_drift(runs: Path, data: str, clips: int, seconds: float, window: int, only: list[str] | None = None) -> tuple[str, str]:
    """Identity drift per time window (the paper's 0-5 / 5-15 / 15-25 s protocol) of streams far longer than the
    training windows, from the first held-out frames (their transcripts cover only the first window). ``only``:
    ``name:mode`` rows to run (default: every stage-3 model at Few 4, and Multi 50 of Mutual Forcing and stage 2)."""
    from lightning_mf.lit.base import SamplerConfig
    from lightning_mf.metrics import IdentityDrift
    from lightning_mf.tools.evaluate import load_module

    plan = [(name, "few4") for name in STAGE3] + [("mutual_forcing", "multi50"), ("joint", "multi50")]
    if only:
        plan = [tuple(row.split(":", 1)) for row in only]
    lines = ["| model | mode | 0-5 s | 5-15 s | 15-25 s | gen time |", "|---|---|---|---|---|---|"]
    for name, mode in plan:
        module = load_module(str(runs / name / "checkpoints" / "last.ckpt"))
        conditions = held_out(module, data, clips, window_chunks=4)
        few = mode.startswith("few")
        sampler = SamplerConfig(mode="few" if few else "multi", steps=4 if few else 50, cfg_scale=None if few else 3.0, window=window)
        chunks = round(seconds / module.spec.chunk_seconds)
        started = time.perf_counter()
        with torch.no_grad():
            video = module.generate(conditions, num_chunks=chunks, sampler=sampler)["video"]
        took = time.perf_counter() - started
        drift = IdentityDrift(fps=module.spec.fps, window_seconds=(5.0, 15.0, 25.0))
        drift.update(video)
        values = drift.compute()
        cells = [f"{float(values[k]):.2f}" for k in sorted(k for k in values if k != "drift_mean")]
        lines.append(f"| {name} | {mode} | " + " | ".join(cells) + f" | {took:.1f} s |")
        print(lines[-1], flush=True)
    command = f"python benchmarks/mutual_forcing.py long --runs {runs} --data {data} --clips {clips} --seconds {seconds} --window {window}"
    command += f" --only {' '.join(only)}" if only else ""
    return command, "\n".join(lines)


def _cell(rows: list[dict[str, float]], key: str) -> str:
    """``mean ± 95% interval over clips (sd over seeds)``: the interval is the mean of each seed's interval (bootstrap
    for the Fréchet distances, 1.96 standard errors for the rest)."""
    if key not in rows[0]:
        return "-"
    values = [r[key] for r in rows]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    intervals = [r[f"{key}_ci95"] for r in rows if f"{key}_ci95" in r]
    interval = f" ± {statistics.mean(intervals):.2g}" if intervals else ""
    return f"{statistics.mean(values):.3g}{interval} (sd {spread:.2g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p_steps = sub.add_parser("steps")
    p_steps.add_argument("--steps", type=int, default=10)
    p_steps.add_argument("--write", type=Path, default=None)
    p_head = sub.add_parser("headline")
    p_head.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    p_head.add_argument("--data", default="data/bench")
    p_head.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p_head.add_argument("--clips", type=int, default=32, help="whole held-out clips generated (the data needs twice as many)")
    p_head.add_argument("--syncnet", default=None)
    p_head.add_argument("--write", type=Path, default=None)
    p_long = sub.add_parser("long")
    p_long.add_argument("--runs", type=Path, default=Path("runs/tiny"))
    p_long.add_argument("--data", default="data/bench")
    p_long.add_argument("--clips", type=int, default=4)
    p_long.add_argument("--seconds", type=float, default=25.0)
    p_long.add_argument("--window", type=int, default=4)
    p_long.add_argument("--only", nargs="+", default=None, help="name:mode rows, e.g. mutual_forcing:few4")
    p_long.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.what == "steps":
        table = "\n".join(["| config | history | ShortCut : DMD | DMD sample | teacher CFG | chunks/step | step |", "|---|---|---|---|---|---|---|"] + step_times(args.steps))
        body = (
            f"## Stage-3 training step, tiny configs (batch 8 windows)\n\n`python benchmarks/mutual_forcing.py steps --steps "
            f"{args.steps}` on {machine()}, {time.strftime('%Y-%m-%d')}; median of {args.steps} steps after 3 warm-up "
            f"steps, random init (rollout, every loss, both optimizers, EMA). ShortCut : DMD: the self-distillation weights (Mutual "
            f"Forcing's default has no DMD term since 2026-12-07, the paper's is 2/3 : 1/3). DMD sample `rollout`: the rollout's own chunks "
            f"(only their last jump again); `fresh`: every chunk sampled anew (before issue 16). Teacher CFG: `distill_cfg`, the "
            f"guidance of the Multi-mode teacher (3 before issue 16's stage-3 fix; at 1 it costs no unconditional pass).\n\n{table}"
        )
        print(write_section(args.write, "stage3-steps", body) if args.write else body)
        return
    if args.what == "long":
        command, table = long_drift(args.runs, args.data, args.clips, args.seconds, args.window, args.only)
        body = (
            f"## Long streams: identity drift per time window (tiny synthetic)\n\n`{command}` on {machine()}, "
            f"{time.strftime('%Y-%m-%d')}. Drift is the L1 distance (0..255 colour levels) of the face and background "
            f"median colours to the first frame, per window of the paper's protocol; training windows were 0.5 s, "
            f"the KV cache keeps the first-frame sink and the last {args.window} chunks.\n\n{table}"
        )
        print(write_section(args.write, "long-drift", body) if args.write else body)
        return
    command, table = headline(args.runs, args.data, args.seeds, args.clips, args.syncnet)
    body = (
        f"## Headline: Few vs Multi of one Mutual Forcing model, and the baselines (tiny synthetic)\n\n`{command}` on "
        f"{machine()}, {time.strftime('%Y-%m-%d')}. Checkpoints from `bash benchmarks/headline.sh`. Each cell: mean over "
        f"generation seeds (same conditions) ± its 95% interval over the {args.clips} clips (sd over seeds); gen time is the wall-clock of generating all clips, with the speed-up "
        f"over Multi 50 + CFG of the same model.\n\n{table}"
    )
    print(write_section(args.write, "headline", body) if args.write else body)


if __name__ == "__main__":
    main()
