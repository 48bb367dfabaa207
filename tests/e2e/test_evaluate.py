"""`lightning-mf evaluate` on a checkpoint: reference rows (real data, real data of other characters, the first frame
copied), a row per mode, a JSON report."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_mf.cli import run
from lightning_mf.lit import JointTraining
from lightning_mf.models import TowerConfig
from lightning_mf.models.syncnet import SyncNet
from lightning_mf.spec import AVSpec
from lightning_mf.tools.evaluate import parse_mode


def _checkpoint(path: Path, **kwargs) -> Path:
    torch.manual_seed(0)
    model = JointTraining(spec=AVSpec(), tower=TowerConfig(dim=32, depth=1, heads=2, vocab_size=32), **kwargs)
    if model.ema is not None:
        for p in model.ema.parameters():  # EMA and online weights differ, as after training
            p.data.add_(0.3 * torch.randn_like(p))
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.mark.slow  # whole clips, two modes, five scorings: 30 s
def test_evaluate_writes_reference_rows_and_one_row_per_mode(tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _checkpoint(tmp_path / "joint.ckpt")
    report = tmp_path / "report.json"
    torch.save(SyncNet(AVSpec()).state_dict(), tmp_path / "syncnet.pt")  # untrained: only the plumbing is checked
    rows = run([
        "evaluate", "--ckpt", str(ckpt), "--data", str(tiny_shards), "--modes", "[multi2, multi2heun]",
        "--num-clips", "2", "--bootstraps", "20", "--syncnet", str(tmp_path / "syncnet.pt"), "--swapped", "true", "--out", str(report),
    ])  # whole clips by default
    swaps = ["real, another clip's transcript", "multi2, another clip's transcript", "multi2heun, another clip's transcript"]
    assert list(rows) == ["real (held-out)", "real, other characters", "copy first frame", "copy first frame + grain", swaps[0], "multi2", swaps[1], "multi2heun", swaps[2]]
    assert all({"video_timing_r", "video_timing_r_frame_clip", "audio_timing_r_frame_clip"} <= set(rows[k]) for k in swaps)
    assert rows[swaps[0]]["video_timing_r_frame_clip"] > 0.9  # real clips follow their own clip, not the swapped words
    rows = {k: v for k, v in rows.items() if k not in swaps}
    assert all({"lse_d", "lse_c", "av_offset", "fd_motion", "video_timing_r", "audio_timing_r"} <= set(row) for row in rows.values())
    real, others, static, generated = (rows[k] for k in ("real (held-out)", "real, other characters", "copy first frame", "multi2"))
    assert real["oracle_sync_corr"] > 0.8 and real["drift_mean"] < 1.0  # real clips are in sync and stable
    assert real["video_timing_r"] > 0.9 and real["audio_timing_r"] > 0.9  # and follow their own transcripts
    assert others["fd_frames"] == real["fd_frames"] and others["drift_mean"] > 10 * real["drift_mean"]  # not these characters
    assert static["video_timing_r"] == static["audio_timing_r"] == 0.0 and static["fd_motion"] > 3 * real["fd_motion"]  # 2 clips
    assert generated["fd_frames"] > real["fd_frames"]  # an untrained model is far from the data
    written = json.loads(report.read_text())
    assert written["rows"]["multi2"] == pytest.approx(generated) and written["window_chunks"] == 16  # 2 s = 16 chunks
    assert all(f"{fd}_ci95" in generated for fd in ("fd_frames", "fd_clips", "fd_motion", "fd_audio"))  # bootstrap intervals
    printed = capsys.readouterr().out
    assert "real (held-out)" in printed and "fd_frames" in printed and "report:" in printed


def test_evaluate_names_bad_arguments(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--ckpt .*missing.ckpt does not exist"):
        run(["evaluate", "--ckpt", str(tmp_path / "missing.ckpt")])
    ckpt = _checkpoint(tmp_path / "joint.ckpt")
    with pytest.raises(ValueError, match=r"holds 4 held-out clips; --num_clips 3 needs 6 .* lower --num_clips to 2 or write"):
        run(["evaluate", "--ckpt", str(ckpt), "--data", str(tiny_shards), "--num-clips", "3"])  # before any generation
    with pytest.raises(ValueError, match=r"ctx_s is a noise level in \[0, 1\) .*got 1.5"):
        run(["evaluate", "--ckpt", str(ckpt), "--data", str(tiny_shards), "--num-clips", "2", "--ctx_s", "1.5"])
    for bad in ("few4heun", "multi", "dmd4"):
        with pytest.raises(ValueError, match=f"unknown mode '{bad}'"):
            parse_mode(bad, 3.0, 3.0)
    assert ckpt.is_file()


@pytest.mark.slow  # five evaluations: 25 s
def test_evaluate_samples_the_weights_asked_for(tiny_shards: Path, tmp_path: Path) -> None:
    args = ["--data", str(tiny_shards), "--modes", "[multi2]", "--num-clips", "2", "--window-chunks", "2"]
    ckpt = str(_checkpoint(tmp_path / "joint.ckpt"))
    runs = {w: run(["evaluate", "--ckpt", ckpt, *args, *(["--weights", w] if w else []), "--out", str(tmp_path / f"{w}.json")])
            for w in (None, "ema", "online")}
    scores = {w: {k: v for k, v in rows["multi2"].items() if k != "generate_seconds"} for w, rows in runs.items()}
    assert scores[None] == scores["ema"] != scores["online"]  # the EMA by default
    assert json.loads((tmp_path / "online.json").read_text())["weights"] == "online"
    without = str(_checkpoint(tmp_path / "no_ema.ckpt", ema_decay=None))
    with pytest.raises(ValueError, match="--weights ema: .*no_ema.ckpt has no EMA weights .*use --weights online"):
        run(["evaluate", "--ckpt", without, *args, "--weights", "ema"])
    run(["evaluate", "--ckpt", without, *args, "--out", str(tmp_path / "x.json")])
    assert json.loads((tmp_path / "x.json").read_text())["weights"] == "online"


def test_modes_parse_to_samplers_with_their_nfe() -> None:
    multi, heun, few = parse_mode("multi50", 5.0, 3.0), parse_mode("multi25heun", 5.0, 3.0), parse_mode("few4", 5.0, 3.0)
    assert (multi.mode, multi.steps, multi.guidance, multi.nfe()) == ("multi", 50, 5.0, 100)  # CFG counts twice
    assert (heun.heun, heun.nfe()) == (True, 2 * (25 + 24))  # no correction on the last step
    assert (few.mode, few.steps, few.guidance, few.nfe()) == ("few", 4, 1.0, 4)  # CFG is distilled into Few mode
    assert all(d > 0 for _, _, d in few.grid()) and all(d == 0 for _, _, d in multi.grid())
    interval, few_interval = parse_mode("multi50", 5.0, 3.0, cfg_above=0.75), parse_mode("few4", 5.0, 3.0, cfg_above=0.75)
    assert (interval.cfg_above, interval.nfe()) == (0.75, 75)  # 25 of the 50 steps start above s = 0.75
    assert few_interval.cfg_above == 0.0  # Few mode is never guided
    with pytest.raises(ValueError, match=r"cfg_above is a noise level in \[0, 1\).*got 1.0"):
        parse_mode("multi50", 3.0, 3.0, cfg_above=1.0)
    jump, heun_jump = parse_mode("multi50jump0.3", 3.0, 3.0), parse_mode("multi25heunjump.5", 1.0, 3.0)
    assert (jump.jump_from, jump.nfe(), jump.grid()[-1]) == (0.3, 100, (0.3, 0.3, 0.0))  # still 50 steps
    assert (heun_jump.heun, heun_jump.jump_from, heun_jump.nfe()) == (True, 0.5, 25 + 24)  # the jump is not corrected
    assert multi.jump_from == 0.0
    for bad in ("few4jump0.3", "multi50jump", "multi50jump1.5", "multi50jump0.3heun"):
        with pytest.raises(ValueError, match=rf"unknown mode '{bad}'; use multi<steps>\[heun\]\[jump<level>\] or few<jumps>"):
            parse_mode(bad, 3.0, 3.0)


@pytest.mark.slow  # three evaluations: 15 s
def test_evaluate_writes_the_history_at_the_models_context_level_unless_told(tiny_shards: Path, tmp_path: Path) -> None:
    """A model trained on a noised history (its ``ctx_s``) is evaluated on one: the default is its level,
    ``--ctx_s`` overrides it, and the report says which was used."""
    args = ["--data", str(tiny_shards), "--modes", "[multi2]", "--num-clips", "2", "--window-chunks", "3"]
    ckpt = str(_checkpoint(tmp_path / "joint.ckpt", ctx_s=0.4))
    runs = {}
    for name, extra in (("default", []), ("given", ["--ctx_s", "0.4"]), ("clean", ["--ctx_s", "0"])):
        rows = run(["evaluate", "--ckpt", ckpt, *args, *extra, "--out", str(tmp_path / f"{name}.json")])
        runs[name] = {k: v for k, v in rows["multi2"].items() if k != "generate_seconds"}
        assert json.loads((tmp_path / f"{name}.json").read_text())["ctx_s"] == (0.0 if name == "clean" else 0.4)
    assert runs["default"] == runs["given"] != runs["clean"]  # chunks 2-3 see another history
