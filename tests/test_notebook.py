"""notebooks/ablations.ipynb executes headless on fixture runs and shows one table row per ablation, and the
reference experiment's targets and stage-3 curves when its reference.json is there."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from helpers import execute_notebook
from torch.utils.tensorboard import SummaryWriter

from lightning_mf.analysis import ABLATIONS, METRICS, ablation_table, drift_by_window, load_reference, load_runs, to_markdown

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "ablations.ipynb"
RUNS = {"mutual_forcing": 1.0, "shortcut_only": 2.0, "dmd_only": 3.0, "teacher_forcing": 4.0}
MODES = {"few1": 0.1, "few2": 0.2, "few4": 0.4, "few8": 0.8, "multi50": 5.0}


def value(run: str, mode: str, metric: str, step: int) -> float:
    """A different number for every (run, mode, metric, step), so the table can be checked exactly."""
    return RUNS[run] * 100 + MODES[mode] * 10 + METRICS.index(metric) + step / 1000


@pytest.fixture()
def fixture_runs(tmp_path: Path) -> Path:
    """Event files as GenerationEval writes them, at steps 50 and 100 (the table takes the last)."""
    for run in RUNS:
        writer = SummaryWriter(str(tmp_path / run))
        for step in (50, 100):
            for mode in MODES:
                for metric in METRICS:
                    writer.add_scalar(f"eval/{metric}_{mode}", value(run, mode, metric, step), step)
                for window in range(3):
                    writer.add_scalar(f"eval/drift_w{window}_{mode}", window + RUNS[run], step)
            writer.add_scalar("train/loss", 1.0 / step, step)
        writer.close()
    return tmp_path


def test_ablation_table_takes_each_runs_last_evaluation(fixture_runs: Path) -> None:
    runs = load_runs(fixture_runs)
    assert sorted(runs) == sorted(RUNS)
    table = ablation_table(runs)
    assert [row["ablation"] for row in table] == [a.name for a in ABLATIONS]
    for row, ablation in zip(table, ABLATIONS):
        for metric in METRICS:
            assert row[metric] == pytest.approx(value(ablation.run, ablation.mode, metric, 100), abs=1e-3)
    assert drift_by_window(runs["dmd_only"], "few4") == [3.0, 4.0, 5.0]
    missing = ablation_table({k: v for k, v in runs.items() if k != "dmd_only"})
    assert all(math.isnan(row["fd_frames"]) for row in missing if row["run"] == "dmd_only")
    assert to_markdown(table).count("\n") == len(ABLATIONS) + 1


def test_load_runs_says_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make_ablation_runs.sh"):
        load_runs(tmp_path)


REFERENCE = {  # the shape benchmarks/reference.py report writes
    "targets": [["stage 1 video follows the transcript", "0.10; 0.05, 0.02", "**not met**"], ["time to quality", "0.60x", "met"]],
    "curves": {
        "video_pretrain": [{"step": 300, "seconds": 200.0, "video_timing_r": 0.1}],
        "mutual_forcing-seed0": [{"step": 24, "seconds": 60.0, "fd_motion": 9.0, "fd_audio": 4.0, "drift_mean": 20.0},
                                 {"step": 90, "seconds": 240.0, "fd_motion": 7.0, "fd_audio": 3.0, "drift_mean": 15.0}],
        "baseline_dmd_sf-seed0": [{"step": 160, "seconds": 240.0, "fd_motion": 8.0, "fd_audio": 5.0, "drift_mean": 18.0}],
    },
    "finals": [], "long": {},
}


def test_load_reference_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="bash benchmarks/reference.sh"):
        load_reference(tmp_path / "reference.json")


@pytest.mark.parametrize("with_reference", [True, False])
def test_notebook_executes_headless_on_fixture_runs(fixture_runs: Path, with_reference: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every code cell runs in order in one namespace, as a kernel would run them (MPLBACKEND=Agg); the reference
    experiment's section draws its stage-3 curves when its file is there and says how to make it when not."""
    reference = fixture_runs / "reference.json"
    if with_reference:
        reference.write_text(json.dumps(REFERENCE))
    monkeypatch.setenv("LMF_REFERENCE", str(reference))
    monkeypatch.setenv("LMF_ABLATION_RUNS", str(fixture_runs))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(NOTEBOOK.parent)
    namespace = execute_notebook(NOTEBOOK)
    table = namespace["table"]
    assert len(table) == len(ABLATIONS) and len({row["ablation"] for row in table}) == len(ABLATIONS)
    assert sorted(namespace["figures"]) == sorted(["drift", "history", "objectives", "steps"] + (["reference"] if with_reference else []))
    if with_reference:
        axes = namespace["figures"]["reference"].axes
        assert [line.get_label() for line in axes[0].lines] == ["mutual_forcing-seed0", "baseline_dmd_sf-seed0"]  # stage 3 only
        assert list(axes[0].lines[0].get_xdata()) == [1.0, 4.0] and list(axes[0].lines[0].get_ydata()) == [9.0, 7.0]
    assert os.environ["LMF_ABLATION_RUNS"] == str(namespace["RUNS"])
