"""`lightning-mf evaluate` on a checkpoint: a reference row from real data, a row per mode, a JSON report."""

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


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = JointTraining(spec=AVSpec(), tower=TowerConfig(dim=32, depth=1, heads=2, vocab_size=32))
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def test_evaluate_writes_a_reference_row_and_one_row_per_mode(tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _checkpoint(tmp_path / "joint.ckpt")
    report = tmp_path / "report.json"
    torch.save(SyncNet(AVSpec()).state_dict(), tmp_path / "syncnet.pt")  # untrained: only the plumbing is checked
    rows = run([
        "evaluate", "--ckpt", str(ckpt), "--data", str(tiny_shards), "--modes", "[multi2, multi2heun]",
        "--num-clips", "2", "--window-chunks", "4", "--syncnet", str(tmp_path / "syncnet.pt"), "--out", str(report),
    ])
    assert list(rows) == ["real (held-out)", "multi2", "multi2heun"]
    assert all({"lse_d", "lse_c", "av_offset"} <= set(row) for row in rows.values())
    real, generated = rows["real (held-out)"], rows["multi2"]
    assert real["oracle_sync_corr"] > 0.8 and real["drift_mean"] < 1.0  # real clips are in sync and stable
    assert generated["fd_frames"] > real["fd_frames"]  # an untrained model is far from the data
    assert json.loads(report.read_text())["rows"]["multi2"] == pytest.approx(generated)
    printed = capsys.readouterr().out
    assert "real (held-out)" in printed and "fd_frames" in printed and "report:" in printed


def test_evaluate_names_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--ckpt .*missing.ckpt does not exist"):
        run(["evaluate", "--ckpt", str(tmp_path / "missing.ckpt")])
    ckpt = _checkpoint(tmp_path / "joint.ckpt")
    for bad in ("few4heun", "multi", "dmd4"):
        with pytest.raises(ValueError, match=f"unknown mode '{bad}'"):
            parse_mode(bad, 3.0, 3.0)
    assert ckpt.is_file()


def test_modes_parse_to_samplers_with_their_nfe() -> None:
    multi, heun, few = parse_mode("multi50", 5.0, 3.0), parse_mode("multi25heun", 5.0, 3.0), parse_mode("few4", 5.0, 3.0)
    assert (multi.mode, multi.steps, multi.guidance, multi.nfe()) == ("multi", 50, 5.0, 100)  # CFG counts twice
    assert (heun.heun, heun.nfe()) == (True, 2 * (25 + 24))  # no correction on the last step
    assert (few.mode, few.steps, few.guidance, few.nfe()) == ("few", 4, 1.0, 4)  # CFG is distilled into Few mode
    assert all(d > 0 for _, _, d in few.grid()) and all(d == 0 for _, _, d in multi.grid())
