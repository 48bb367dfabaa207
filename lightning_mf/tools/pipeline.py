"""`lightning-mf pipeline`: the whole method on the tiny preset in one command, resumable stage by stage.

shards -> stage 1 (video, audio) -> stage 2 (joint) -> stage 3 (Mutual Forcing) -> evaluation (Few 4 vs Multi 50 + CFG)
-> a generated clip longer than the training clips. Each stage is the real ``lightning-mf fit`` on its
``configs/<preset>/`` file, with the step budget overridden; a stage whose checkpoint already reached its budget is
reused, one that stopped early is resumed from its ``last.ckpt``, so re-running after an interruption continues.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from PIL import Image

from lightning_mf.callbacks.generation_eval import take_windows
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.data.shards import read_index
from lightning_mf.data.synthetic import PRESETS
from lightning_mf.metrics.intervals import table
from lightning_mf.tools import shards
from lightning_mf.tools.evaluate import evaluate
from lightning_mf.tools.generate import first_frame_l1, generate

__all__ = ["STAGES", "pipeline"]

STAGES = ("video_pretrain", "audio_pretrain", "joint", "mutual_forcing")
EVAL_MODES = ("few4", "multi50")  # the evaluation: Few 4 against Multi 50 + CFG
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SUMMARY = (
    "nfe_per_chunk", "generate_seconds", "fd_frames", "fd_clips", "fd_motion", "fd_audio", "drift_mean", "video_timing_r",
    "audio_timing_r", "oracle_sync_corr", "vowel_error_rate", "speech_frame_error",
)


def pipeline(
    *,
    preset: str = "tiny",
    data: str = "data/tiny",
    runs: str = "runs/demo",
    num_clips: int = 96,
    steps: tuple[int, int, int, int] = (160, 160, 160, 32),
    eval_clips: int = 4,
    duration: float = 4.0,
    restart: bool = False,
) -> dict[str, object]:
    """Run every stage of the method and print a table of metrics and where the results are.

    Args:
        preset: data and model size: the ``configs/<preset>/`` files and the synthetic preset of that name.
        data: shard folder (written if missing or not ``num_clips`` synthetic clips of ``preset``).
        runs: folder of the runs (TensorBoard events, checkpoints), the evaluation and the generated clip.
        num_clips: synthetic clips to write (10% are held out: the evaluation's reference row needs 2 x eval_clips).
        steps: optimizer steps of stage 1 video, stage 1 audio, stage 2 and stage 3.
        eval_clips: held-out windows generated per mode in the evaluation.
        duration: seconds of the generated clip (the default is twice the tiny training clips).
        restart: delete ``runs`` first and train every stage again (the shards are kept).
    """
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if len(steps) != len(STAGES) or min(steps) < 1:
        raise ValueError(f"--steps needs {len(STAGES)} positive step counts ({', '.join(STAGES)}), got {list(steps)}")
    missing = [s for s in STAGES if not (CONFIGS / preset / f"{s}.yaml").is_file()]
    if missing:
        raise FileNotFoundError(f"no {missing} under {CONFIGS / preset}: run from a checkout of the repository")
    started, root = time.perf_counter(), Path(runs)
    if restart and root.exists():
        shutil.rmtree(root)
    _banner(f"data: {num_clips} synthetic '{preset}' clips in {data}")
    _shards(preset, Path(data), num_clips)
    checkpoints: dict[str, Path] = {}
    for stage, budget in zip(STAGES, steps):
        checkpoints[stage] = _fit(preset, stage, budget, Path(data), root, checkpoints)

    report, ckpt = root / "evaluation.json", checkpoints["mutual_forcing"]
    rows = _evaluation_of(report, ckpt, data, eval_clips)
    if rows is not None:
        _banner(f"evaluation: reusing {report} (made from {ckpt}, which has not changed since)")
    else:
        _banner("evaluation: Few 4 vs Multi 50 + CFG of the Mutual Forcing model, on held-out conditions")
        rows = evaluate(ckpt=str(ckpt), data=data, modes=EVAL_MODES, num_clips=eval_clips, out=str(report))
    _banner(f"generation: {duration:g} s (the training clips are {PRESETS[preset].clip_seconds:g} s), Few 4, rolling window")
    first_frame, transcript, real_l1 = _conditions(preset, Path(data), root / "inputs")
    timing = generate(
        ckpt=str(checkpoints["mutual_forcing"]), first_frame=str(first_frame), transcript=str(transcript),
        duration=duration, mode="few4", out=str(root / "generated.mp4"),
    )
    _banner(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    timing["real_first_frame_l1"] = real_l1
    _summary(rows, root, timing)
    return {"evaluation": rows, "generation": timing, "video": str(root / "generated.mp4"), "logs": str(root)}


def _evaluation_of(report: Path, ckpt: Path, data: str, eval_clips: int) -> dict[str, dict[str, float]] | None:
    """The rows of an earlier evaluation to reuse: the same checkpoint file, unchanged since (older than the report),
    the same data, clips and modes; None otherwise (then the pipeline evaluates again)."""
    try:
        earlier = json.loads(report.read_text())
        same = (earlier["ckpt"], earlier["data"], earlier["num_clips"]) == (str(ckpt), str(data), eval_clips)
        if same and set(EVAL_MODES) <= set(earlier["rows"]) and ckpt.stat().st_mtime < report.stat().st_mtime:
            return earlier["rows"]
    except (FileNotFoundError, KeyError, ValueError):
        pass
    return None


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _shards(preset: str, data: Path, num_clips: int) -> None:
    """Write the shards unless ``data`` already holds exactly these synthetic clips."""
    try:
        index = read_index(data)
        have = sum(split["clips"] for split in index["splits"].values())
        if have == num_clips and index.get("origin") == shards.synthetic_origin(preset, 0):
            print(f"reusing {data} ({have} clips)")
            return
    except (FileNotFoundError, KeyError, ValueError):
        pass
    shards.synthetic(preset=preset, num_clips=num_clips, out=str(data), overwrite=True)


def _fit(preset: str, stage: str, budget: int, data: Path, root: Path, earlier: dict[str, Path]) -> Path:
    """Train ``stage`` up to ``budget`` steps (reusing or resuming its run); returns its last checkpoint."""
    from lightning_mf.cli import run  # the CLI imports the tools, this module among them

    last = root / stage / "checkpoints" / "last.ckpt"
    done = torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last.is_file() else 0
    if done >= budget:
        _banner(f"{stage}: reusing {last} (step {done})")
        return last
    _banner(f"{stage}: {'resuming at step ' + str(done) + ', ' if done else ''}training to step {budget}")
    init = {
        "joint": ["--model.init_args.video_ckpt", str(earlier.get("video_pretrain")), "--model.init_args.audio_ckpt", str(earlier.get("audio_pretrain"))],
        "mutual_forcing": ["--model.init_args.init_ckpt", str(earlier.get("joint"))],
    }.get(stage, [])
    run([
        "fit", "--config", str(CONFIGS / preset / f"{stage}.yaml"), "--data.root", str(data),
        "--trainer.max_steps", str(budget), "--trainer.logger.init_args.save_dir", str(root),
        f"--trainer.callbacks.dirpath={last.parent}",  # the config's ModelCheckpoint (its last callback)
        *init, *(["--ckpt_path", str(last)] if done else []),
    ])  # fmt: skip
    if not last.is_file():
        raise RuntimeError(f"{stage} finished without writing {last}")
    return last


def _conditions(preset: str, data: Path, out: Path) -> tuple[Path, Path, float]:
    """The first held-out window's first frame (png) and its clip's transcript (json), the inputs of ``generate``,
    and the real clip's own mean |frame - first frame| (what a faithful generated clip is compared with)."""
    frames = int(PRESETS[preset].clip_seconds * PRESETS[preset].spec.fps)
    module = AVDataModule(root=str(data), spec=PRESETS[preset].spec, batch_size=1, window_chunks=frames // PRESETS[preset].spec.frames_per_chunk)
    module.setup("validate")
    window = take_windows(module.val_dataloader(), 1)
    out.mkdir(parents=True, exist_ok=True)
    image, words = out / "first_frame.png", out / "transcript.json"
    Image.fromarray(window.video[0, 0].permute(1, 2, 0).numpy()).save(image)
    words.write_text(json.dumps(window.meta[0]["transcript"], indent=1))
    return image, words, first_frame_l1(window.video, window.video[:, 0])


def _summary(rows: dict[str, dict[str, float]], root: Path, timing: dict[str, float]) -> None:
    names = list(rows)  # the reference rows (ceiling, floors) first, then the modes (evaluate's order)
    print("\n".join(table(rows, [m for m in SUMMARY if any(m in rows[name] for name in names)])))
    print(f"\ngenerated clip: {root / 'generated.mp4'} (+ .wav), {timing['duration_s']:g} s at {timing['fps']:.1f} frames/s streamed")
    print(
        f"                mean |frame - first frame| {timing['first_frame_l1']:.1f} levels of 255 "
        f"(the real clip of that frame and transcript: {timing['real_first_frame_l1']:.1f})"
    )
    print(f"evaluation:     {root / 'evaluation.json'}")
    print(f"TensorBoard:    tensorboard --logdir {root}")
