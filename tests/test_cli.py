import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_mf.cli import run
from lightning_mf.data.shards import read_index

REPO = Path(__file__).resolve().parents[1]


def test_top_level_help_lists_trainer_verbs_and_tools(capsys: pytest.CaptureFixture) -> None:
    run(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "shards"):
        assert f"  {command} " in out


def test_shards_synthetic_then_inspect_in_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tiny"
    run(["shards", "synthetic", "--preset", "tiny", "--num-clips", "5", "--out", str(out), "--val-fraction", "0.2"])
    assert "wrote 4 train clips in 1 shard(s) and 1 val clips in 1 shard(s)" in capsys.readouterr().out
    assert read_index(out)["splits"]["train"]["clips"] == 4
    shapes = run(["shards", "inspect", "--data", str(out), "--batch_size", "2", "--window-chunks", "3"])
    assert shapes["video"] == (2, 6, 3, 32, 32) and shapes["audio"] == (2, 6000)
    assert shapes["video_tokens"][:2] == (2, 6 * 16) and shapes["audio_tokens"][:2] == (2, 6 * 4)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run(["shards", "synthetic", "--num-clips", "2", "--out", str(out)])


def test_tool_argument_errors_exit_with_usage(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run(["shards", "synthetic", "--num-clips", "many"])
    assert "num_clips" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown command 'train'"):
        run(["train"])


def test_fit_help_is_lightning_cli_with_the_datamodule(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--data.root" in out and "--data.window_chunks" in out and "--trainer.max_steps" in out


@pytest.mark.slow  # a subprocess that imports everything and writes shards: 10 s
def test_console_script_runs_a_tool_and_exits_zero(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "lightning-mf"
    command = [str(script), "shards", "synthetic", "--num-clips", "2", "--out", str(tmp_path / "s")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "wrote 1 train clips" in result.stdout and "ShardSummary" not in result.stdout + result.stderr


@pytest.mark.parametrize("config", sorted(REPO.glob("configs/**/*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_parses(config: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "data:" in printed and "class_path: lightning_mf.lit." in printed


def test_batch_limits_keep_their_int_type(capsys: pytest.CaptureFixture) -> None:
    """Lightning reads ``limit_*_batches: 1`` as one batch but ``1.0`` as all of them; jsonargparse 4.53 turned the
    int into a float (so ``--trainer.limit_predict_batches 1`` predicted the whole split)."""
    with pytest.raises(SystemExit):
        run([
            "predict", "--config", str(REPO / "configs/tiny/syncnet.yaml"), "--trainer.limit_predict_batches", "1",
            "--trainer.limit_test_batches", "1.0", "--print_config",
        ])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert type(trainer["limit_predict_batches"]) is int and trainer["limit_predict_batches"] == 1
    assert type(trainer["limit_val_batches"]) is int and trainer["limit_val_batches"] == 2  # from the YAML
    assert type(trainer["limit_test_batches"]) is float and trainer["limit_test_batches"] == 1.0  # a fraction stays one


def test_a_spec_that_does_not_tile_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    args = ["fit", "--config", str(REPO / "configs/tiny/video_pretrain.yaml"), "--data.spec.mel_hop", "300"]
    with pytest.raises(ValueError, match="mel_hop=300 does not divide the 1000 samples"):
        run(args + ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"])


def test_an_unknown_model_class_path_is_rejected_by_name(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(REPO / "configs/tiny/video_pretrain.yaml"), "--model", "lightning_mf.lit.NoSuchStage"])
    assert exit_info.value.code == 2
    assert "lightning_mf.lit.NoSuchStage" in capsys.readouterr().err
