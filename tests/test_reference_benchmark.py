"""benchmarks/reference.py: the plan trains what issue 16 asks for (equal stage-3 wall-clock, two training seeds), its
config overlays parse in the CLI, the targets are read off the results as the issue states them, and the long-stream
segments keep frames, audio and ground truth aligned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from reference import Fit, _segment, evaluate_run, overlay, plan, report, targets  # noqa: E402

from lightning_mf.batch import AVBatch  # noqa: E402


def test_stage_3_runs_share_one_wall_clock_budget_and_the_two_compared_methods_have_two_seeds(tmp_path: Path) -> None:
    fits = plan(120, 100, 80, 3.5)
    stage3 = [f for f in fits if f.stage == "stage 3"]
    assert [f.name for f in fits[:3]] == ["audio_pretrain", "video_pretrain", "joint"]
    assert {f.minutes for f in stage3} == {3.5} and all(f.steps is None for f in stage3)
    seeds = {config: sorted(f.seed for f in stage3 if f.config == config) for config in {f.config for f in stage3}}
    assert seeds == {"mutual_forcing": [0, 1], "baseline_dmd_sf": [0, 1], "baseline_shortcut_tf": [0], "baseline_dmd_tf": [0]}
    budgets = {overlay(f, tmp_path)["trainer"]["max_time"] for f in stage3}
    assert budgets == {"00:00:03:30"}
    mf = overlay(stage3[0], tmp_path)
    assert mf["trainer"]["limit_val_batches"] == 0  # nothing but training inside the budget
    assert mf["model"]["init_args"]["init_ckpt"] == str(tmp_path / "joint/checkpoints/last.ckpt")
    assert mf["seed_everything"] == 0 and overlay(stage3[1], tmp_path)["seed_everything"] == 1
    joint = overlay(fits[2], tmp_path)
    assert joint["trainer"]["max_steps"] == 80 and joint["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] == 20
    assert joint["model"]["init_args"]["video_ckpt"] == str(tmp_path / "video_pretrain/checkpoints/last.ckpt")


def test_the_stage_3_overlay_parses_in_the_cli(tmp_path: Path) -> None:
    fit = next(f for f in plan(10, 10, 10, 2.0) if f.name == "baseline_dmd_sf-seed1")
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay(fit, tmp_path)))
    done = subprocess.run(
        [sys.executable, "-m", "lightning_mf", "fit", "--config", "configs/tiny/baseline_dmd_sf.yaml", "--config", str(tmp_path / "overlay.yaml"), "--print_config"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load(done.stdout)
    assert config["seed_everything"] == 1 and config["trainer"]["max_time"] == "00:00:02:00"
    callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]  # GenerationEval is gone: not in the budget
    assert callbacks == ["lightning_mf.callbacks.ModelCheckpoint", "lightning_mf.callbacks.TimedCheckpoint"]
    assert config["trainer"]["callbacks"][1]["init_args"]["every_seconds"] == 60.0
    assert config["model"]["init_args"]["init_ckpt"] == str(tmp_path / "joint/checkpoints/last.ckpt")


def test_targets_are_read_off_the_results_as_the_issue_states_them() -> None:
    swap = "multi50, another clip's transcript"
    quality = {"fd_motion": 10.0, "fd_audio": 5.0, "oracle_sync_corr": 0.5, "drift_mean": 20.0}
    results = {
        ("video_pretrain", "multi50"): [dict(video_timing_r=0.8)],
        ("video_pretrain", swap): [dict(video_timing_r=0.75, video_timing_r_frame_clip=0.25)],  # follows its frame too much
        ("joint", "multi50"): [dict(video_timing_r=0.7, audio_timing_r=0.9, oracle_sync_corr=0.6, vowel_error_rate=0.2, fd_motion=9.0, fd_motion_ci95=0.5)],
        ("mutual_forcing", "multi50"): [dict(**quality, fd_motion_ci95=1.0)],
        ("mutual_forcing", "few4"): [dict(**quality | {"fd_motion": 10.9, "fd_audio": 5.8, "drift_mean": 10.0})],
        ("baseline_dmd_sf", "few4"): [dict(fd_motion=12.0, fd_audio=6.0, oracle_sync_corr=0.4, drift_mean=10.0)],
        ("baseline_shortcut_tf", "few4"): [dict(fd_motion=9.0, fd_audio=4.0, oracle_sync_corr=0.6, drift_mean=30.0)],
    }
    curve = {
        "mutual_forcing-seed0": [{"seconds": 60.0, "fd_motion": 20.0}, {"seconds": 120.0, "fd_motion": 11.0}],
        "baseline_dmd_sf-seed0": [{"seconds": 60.0, "fd_motion": 15.0}, {"seconds": 200.0, "fd_motion": 12.0}],
    }
    longs = {"mutual_forcing-seed0": {"first_drift_mean": 10.0, "last_drift_mean": 14.0, "first_oracle_sync_corr": 0.5, "last_oracle_sync_corr": 0.3}}
    claims = {claim.split(" (")[0]: (measured, met) for claim, measured, met in targets(results, curve, longs)}
    assert claims["stage 1 video follows the transcript"] == ("0.80; 0.75, 0.25", "**not met**")
    assert claims["stage 2 Multi 50 + CFG learns sync"][1] == "met"
    # fd_motion 0.9 off: inside Multi 50's interval of 1.0; fd_audio 0.8 worse: more than 15% of 5.0; drift half of
    # Multi 50's: far outside, but better, so as good
    assert claims["Few 4 as good as Multi 50 + CFG"] == ("3/4 metrics (fd_audio worse)", "**not met**")
    # FD motion 10 against stage 2's 9: inside the intervals (1.0 + 0.5); A-V sync 0.5 against 0.6 with no interval
    assert claims["the modes help each other"] == ("worse on oracle_sync_corr", "**not met**")
    assert claims["Few 4 beats baseline_dmd_sf Few 4 on >= 3 of FD motion, FD audio, A-V sync, drift"] == ("3/4 (fd_motion, fd_audio, oracle_sync_corr)", "met")
    assert claims["Few 4 beats baseline_shortcut_tf Few 4 on >= 3 of FD motion, FD audio, A-V sync, drift"][1] == "**not met**"
    assert claims["Few 4 beats baseline_dmd_tf Few 4 on >= 3 of FD motion, FD audio, A-V sync, drift"] == ("0/4 (none)", "**not met**")
    assert claims["time to quality: Mutual Forcing reaches DMD-SF's final Few 4 FD motion in <= 0.7x its wall-clock"] == ("0.60x", "met")
    assert claims["mutual_forcing-seed0: 10 s Few 4 stream"] == ("drift 1.40x; sync 0.60x", "**not met**")
    assert not any("jump" in claim for claim in claims)  # a run without the jump rows gets no lines for them

    jump = "multi50jump0.3"  # its own rows, read as the Euler rows are: stage 2 falls short, the modes now agree
    results |= {
        ("video_pretrain", jump): [dict(video_timing_r=0.72)],
        ("video_pretrain", f"{jump}, another clip's transcript"): [dict(video_timing_r=0.71, video_timing_r_frame_clip=0.1)],
        ("joint", jump): [dict(video_timing_r=0.65, audio_timing_r=0.9, oracle_sync_corr=0.7, vowel_error_rate=0.2, fd_motion=9.0)],
        ("mutual_forcing", jump): [dict(**quality | {"oracle_sync_corr": 0.7}, fd_motion_ci95=1.0)],
    }
    lines = [line for line in targets(results, curve, longs) if "jump" in line[0]]
    assert [(claim.split(" (")[0], measured, met) for claim, measured, met in lines] == [
        ("stage 1 video", "0.72; 0.71, 0.10", "met"),
        ("stage 2 Multi 50 + CFG ending in a jump from 0.3 learns sync", "0.65, 0.90; 0.70; 0.20", "**not met**"),
        ("Few 4 as good as Multi 50 + CFG ending in a jump from 0.3", "2/4 metrics (fd_audio, oracle_sync_corr worse)", "**not met**"),
        ("the modes help each other", "worse on nothing", "met"),
    ]
    assert "Multi 50 ending in a jump from 0.3" in lines[0][0] and "Multi 50 ending in a jump from 0.3" in lines[3][0]
    assert len(targets(results, curve, longs)) == len(claims) + 4  # the Euler lines are still there, unchanged
    del results[("video_pretrain", jump)]  # the reference run scores the jump in stages 2-3 only: no stage-1 line for it
    assert [claim.split(" (")[0] for claim, _, _ in targets(results, curve, longs) if "jump" in claim][0].startswith("stage 2")


def test_a_long_stream_segment_keeps_frames_audio_and_truth_aligned() -> None:
    frames, spf = 12, 5
    video = torch.arange(frames, dtype=torch.uint8).view(1, frames, 1, 1, 1).expand(2, frames, 3, 2, 2).contiguous()
    audio = torch.arange(frames * spf, dtype=torch.float32).expand(2, -1).contiguous()
    meta = [{"ground_truth": {"mouth_open": [float(t) for t in range(frames)], "identity": {"mouth": [1, 2, 3]}}, "transcript": []}] * 2
    batch = AVBatch(video, audio, torch.zeros(2, dtype=torch.long), ["a", "b"], meta)
    last = _segment(batch, slice(-4, None), spf)
    assert last.video[0, :, 0, 0, 0].tolist() == [8, 9, 10, 11]
    assert last.audio[0].tolist() == [float(x) for x in range(8 * spf, 12 * spf)]
    assert last.meta[0]["ground_truth"]["mouth_open"] == [8.0, 9.0, 10.0, 11.0]
    assert batch.meta[0]["ground_truth"]["mouth_open"][0] == 0.0  # the batch itself is untouched


def test_a_cached_evaluation_gains_the_modes_asked_for_later_and_keeps_its_rows(tmp_path: Path, monkeypatch) -> None:
    """A later run with more Multi-mode seeds scores only the missing modes of a cached file and adds them: the rows
    already there are not recomputed or changed, a complete file is not touched, and nothing is left half written."""
    import lightning_mf.tools.evaluate as tool

    calls = []

    def fake_evaluate(*, ckpt, data, modes, num_clips, seed, bootstraps, swapped, out):
        calls.append((modes, seed))
        Path(out).write_text(json.dumps({"seed": seed, "rows": {m: {"fd_clips": 10.0 + seed} for m in (*modes, "real (held-out)")}}))

    monkeypatch.setattr(tool, "evaluate", fake_evaluate)
    fit = Fit("mutual_forcing-seed0", "mutual_forcing", "stage 3", final_modes=("few4", "multi50"))
    folder = tmp_path / fit.name / "eval"
    folder.mkdir(parents=True)
    cached = {"seed": 1, "rows": {"few4": {"fd_clips": 7.0}, "real (held-out)": {"fd_clips": 1.0}}}
    (folder / "final-seed1.json").write_text(json.dumps(cached))
    evaluate_run(fit, tmp_path, tmp_path, tmp_path, clips=4, multi_seeds=1, parts=("final",))
    assert calls == [(("few4", "multi50"), 0), (("few4",), 2)]  # seed 1 has what one Multi seed asks for
    calls.clear()
    evaluate_run(fit, tmp_path, tmp_path, tmp_path, clips=4, multi_seeds=3, parts=("final",))
    assert calls == [(("multi50",), 1), (("multi50",), 2)]  # only the Multi rows the larger --multi-seeds adds
    merged = json.loads((folder / "final-seed1.json").read_text())
    assert merged["rows"] == {"few4": {"fd_clips": 7.0}, "real (held-out)": {"fd_clips": 1.0}, "multi50": {"fd_clips": 11.0}}
    assert list(merged["rows"]) == ["few4", "real (held-out)", "multi50"]  # added rows come after the cached ones
    assert sorted(p.name for p in folder.iterdir()) == ["final-seed0.json", "final-seed1.json", "final-seed2.json"]
    calls.clear()
    evaluate_run(fit, tmp_path, tmp_path, tmp_path, clips=4, multi_seeds=3, parts=("final",))
    assert calls == []


def test_an_arm_starts_from_the_reference_stage_2_and_writes_under_its_own_folder(tmp_path: Path) -> None:
    """``reference.py arm``: the stage-3 overlay of an arm reads the reference run's stage-2 checkpoint, writes its
    checkpoints and logs under the arms folder, and keeps the reference's wall-clock budget and seed."""
    runs, arms = tmp_path / "reference", tmp_path / "arms"
    fit = Fit("sd03", "mutual_forcing", "stage 3", seed=0, minutes=4.0)
    got = overlay(fit, arms, init_from=runs)
    assert got["model"]["init_args"]["init_ckpt"] == str(runs / "joint/checkpoints/last.ckpt")
    assert got["trainer"]["callbacks"][0]["init_args"]["dirpath"] == str(arms / "sd03/checkpoints")
    assert got["trainer"]["logger"]["init_args"]["save_dir"] == str(arms) and got["trainer"]["max_time"] == "00:00:04:00"
    assert overlay(fit, arms)["model"]["init_args"]["init_ckpt"] == str(arms / "joint/checkpoints/last.ckpt")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["arm"], "arm needs a NAME"),
        (["arm", "x", "--runs", "{tmp}/none"], "no stage-2 checkpoint at {tmp}/none/joint/checkpoints/last.ckpt"),
        (["report", "--model.init_args.sd_weight", "0.3"], "unrecognized arguments: --model.init_args.sd_weight 0.3"),
    ],
)
def test_arm_arguments_are_checked_before_anything_runs(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/reference.py"), *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode != 0 and message.format(tmp=tmp_path) in result.stderr


def test_the_wall_clock_of_a_resumed_run_counts_training_not_the_time_between_pieces(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from transcript_probe import wall_clock

    def piece(suffix: str, steps: range, start: float, per_step: float) -> None:
        writer = SummaryWriter(str(tmp_path), filename_suffix=suffix)
        for step in steps:
            writer.add_scalar("train/loss", 1.0, step, walltime=start + (step - steps[0]) * per_step)
        writer.close()

    piece(".a", range(0, 101, 10), 1000.0, 1.0)
    assert wall_clock(tmp_path) == {step: float(step) for step in range(0, 101, 10)}  # one piece: seconds since its first step
    piece(".b", range(110, 201, 10), 90_000.0, 2.0)  # resumed a day later, slower: 2 s a step
    clock = wall_clock(tmp_path)
    assert clock[100] == 100.0 and clock[110] == 120.0 and clock[200] == 300.0  # not 89 000 s
    piece(".c", range(160, 201, 10), 200_000.0, 1.0)  # resumed again, from the checkpoint at step 150
    clock = wall_clock(tmp_path)
    assert clock[150] == 200.0 and clock[160] == 210.0 and clock[200] == 250.0  # its steps replace the earlier piece's
    assert sorted(clock) == list(range(0, 201, 10))


def test_the_report_says_which_runs_were_trained_outside_the_command(tmp_path: Path) -> None:
    (tmp_path / "video_pretrain").mkdir()
    (tmp_path / "video_pretrain/done.json").write_text(json.dumps({"seconds": 120.0, "note": "resumed in pieces elsewhere"}))
    (tmp_path / "joint").mkdir()
    (tmp_path / "joint/done.json").write_text(json.dumps({"seconds": 60.0}))
    body = report(tmp_path, plan(10, 10, 10, 1.0), 4, None, "cmd")
    budgets = body[body.index("**Budgets**") : body.index("**Long streams**")]
    assert "| video_pretrain | stage 1 | - | 2.0 |" in budgets and "| joint | stage 2 | - | 1.0 |" in budgets
    assert "- video_pretrain: resumed in pieces elsewhere" in budgets and "- joint" not in budgets  # only runs with a note
