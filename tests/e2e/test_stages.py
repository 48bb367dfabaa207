"""The stage configs run through the real CLI, in-process: fit writes checkpoints and TensorBoard events,
the joint stage starts from the two stage-1 checkpoints, predict writes media, --print_config round-trips."""

from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_mf.cli import run
from lightning_mf.data.media import decode_mp4, decode_wav

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "tiny"


def _fit(stage: str, tiny_shards: Path, runs: Path, *extra: str) -> None:
    run([
        "fit", "--config", str(CONFIGS / f"{stage}.yaml"), "--data.root", str(tiny_shards),
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "1",
        "--trainer.logger.init_args.save_dir", str(runs), "--trainer.enable_progress_bar", "false",
        f"--trainer.callbacks.dirpath={runs / stage / 'checkpoints'}",  # the config's ModelCheckpoint
        "--model.init_args.tower.dim", "32", "--model.init_args.tower.heads", "2", *extra,
    ])


def test_cli_fit_resumes_from_its_last_checkpoint(tiny_shards: Path, tmp_path: Path) -> None:
    """`fit --ckpt_path last.ckpt` through the CLI (which loads with weights_only=True) continues the run."""
    runs = tmp_path / "runs"
    _fit("video_pretrain", tiny_shards, runs)
    last = runs / "video_pretrain" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    _fit("video_pretrain", tiny_shards, runs, "--trainer.max_steps", "5", "--ckpt_path", str(last))
    resumed = torch.load(last, weights_only=False)
    assert (first["global_step"], resumed["global_step"]) == (3, 5)
    assert resumed["lightning_mf_state"]["run_seed"] == first["lightning_mf_state"]["run_seed"] == 0
    assert resumed["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["epoch"] >= 1


def test_validate_and_test_verbs_score_the_held_out_split(tiny_shards: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _fit("video_pretrain", tiny_shards, runs)
    common = [
        "--config", str(CONFIGS / "video_pretrain.yaml"), "--data.root", str(tiny_shards), "--trainer.logger", "false",
        "--ckpt_path", str(runs / "video_pretrain" / "checkpoints" / "last.ckpt"), "--trainer.callbacks", "[]",
        "--model.init_args.tower.dim", "32", "--model.init_args.tower.heads", "2",
    ]
    validated = run(["validate", *common]).trainer.callback_metrics
    tested = run(["test", *common]).trainer.callback_metrics
    assert float(validated["val/loss"]) > 0 and float(tested["test/loss"]) == float(validated["val/loss"])  # same split, same seeds


@pytest.mark.slow
def test_three_stage_configs_fit_and_predict(tiny_shards: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for stage in ("video_pretrain", "audio_pretrain"):
        _fit(stage, tiny_shards, runs)
        assert (runs / stage / "checkpoints" / "last.ckpt").is_file()
        events = EventAccumulator(str(runs / stage)).Reload()
        tags = events.Tags()["scalars"]
        modality = stage.split("_")[0]
        assert f"train/fm_{modality}" in tags and "train/loss" in tags and f"val/fm_{modality}" in tags
    _fit(
        "joint", tiny_shards, runs,
        "--model.init_args.video_ckpt", str(runs / "video_pretrain" / "checkpoints" / "last.ckpt"),
        "--model.init_args.audio_ckpt", str(runs / "audio_pretrain" / "checkpoints" / "last.ckpt"),
    )
    joint_ckpt = runs / "joint" / "checkpoints" / "last.ckpt"
    assert joint_ckpt.is_file()
    tags = EventAccumulator(str(runs / "joint")).Reload().Tags()["scalars"]
    assert {"train/fm_video", "train/fm_audio"} <= set(tags)
    assert {"eval/fd_frames_multi50", "eval/oracle_sync_corr_multi50", "eval/vowel_error_rate_multi50"} <= set(tags)  # GenerationEval

    for stage in ("mutual_forcing", "baseline_shortcut_tf", "baseline_dmd_tf", "baseline_dmd_sf"):
        _fit(stage, tiny_shards, runs, "--model.init_args.init_ckpt", str(joint_ckpt))
        assert (runs / stage / "checkpoints" / "last.ckpt").is_file(), stage
        tags = set(EventAccumulator(str(runs / stage)).Reload().Tags()["scalars"])
        assert {"train/loss", "train/dmd" if "dmd" in stage else "train/sc", "val/loss", "eval/fd_frames_few4"} <= tags, stage
    tags = set(EventAccumulator(str(runs / "mutual_forcing")).Reload().Tags()["scalars"])
    assert {"train/fm", "train/sc", "eval/oracle_sync_corr_few4", "eval/fd_audio_multi50"} <= tags
    assert not {"train/dmd", "train/fake_fm"} & tags  # the tiny default: ShortCut only (dmd_weight 0), no fake score
    assert {"train/dmd", "train/fake_fm"} <= set(EventAccumulator(str(runs / "baseline_dmd_sf")).Reload().Tags()["scalars"])

    out = tmp_path / "predictions"
    run([
        "predict", "--config", str(CONFIGS / "mutual_forcing.yaml"), "--data.root", str(tiny_shards),
        "--ckpt_path", str(runs / "mutual_forcing" / "checkpoints" / "last.ckpt"),
        "--model.init_args.tower.dim", "32", "--model.init_args.tower.heads", "2", "--model.init_args.predict_dir", str(out / "few"),
        "--data.val_batch_size", "2", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "false", "--trainer.callbacks", "null", "--trainer.enable_progress_bar", "false",
    ])
    assert len(list((out / "few").glob("*.mp4"))) == 4  # Few mode, 4 jumps: the stage-3 default sampler
    run([
        "predict", "--config", str(CONFIGS / "joint.yaml"), "--data.root", str(tiny_shards), "--ckpt_path", str(joint_ckpt),
        "--model.init_args.tower.dim", "32", "--model.init_args.tower.heads", "2", "--model.init_args.predict_dir", str(out),
        "--model.init_args.sampler.steps", "3", "--data.val_batch_size", "2", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "false", "--trainer.callbacks", "null", "--trainer.enable_progress_bar", "false",
    ])
    mp4s, wavs = sorted(out.glob("*.mp4")), sorted(out.glob("*.wav"))
    assert len(mp4s) == 4 and len(wavs) == 4  # one of each per held-out window
    frames = decode_mp4(mp4s[0].read_bytes())
    audio, rate = decode_wav(wavs[0].read_bytes())
    assert frames.shape == (8, 32, 32, 3) and rate == 16000 and audio.shape == (8 * 1000,)


@pytest.mark.parametrize("config", sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").glob("*/*.yaml")))
def test_print_config_round_trips(config: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every shipped config (tiny and the GPU ones) parses, and what --print_config prints parses to itself."""
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(REPO / "configs" / config), "--print_config"])
    printed = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(printed)
