"""benchmarks/frontier.py: one point per generated row of each evaluation file, the real and copy rows left out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from frontier import points  # noqa: E402


def _eval(path: Path, rows: dict) -> Path:
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_points_keep_generated_rows_with_both_figures_and_the_plot_is_written(tmp_path: Path) -> None:
    a = _eval(tmp_path / "sd03-eval.json", {
        "real (held-out)": {"fd_clips": 0.9, "drift_mean": 0.0},
        "copy first frame": {"fd_clips": 30.0, "drift_mean": 0.0},
        "few4": {"fd_clips": 11.8, "drift_mean": 9.9, "drift_mean_ci95": 2.8},
        "multi50": {"fd_clips": 6.5, "drift_mean": 34.8},
    })  # fmt: skip
    b = _eval(tmp_path / "stage2.json", {"multi10": {"fd_clips": 15.5, "drift_mean": 7.9}, "few4": {"fd_clips": 3.0}})
    assert points([a, b]) == [("sd03", "few4", 11.8, 9.9, 2.8), ("sd03", "multi50", 6.5, 34.8, 0.0), ("stage2", "multi10", 15.5, 7.9, 0.0)]
    out = tmp_path / "plot.png"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks/frontier.py"), str(a), str(b), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0 and "3 rows" in result.stdout and out.read_bytes()[:4] == b"\x89PNG"
    empty = _eval(tmp_path / "empty.json", {"real (held-out)": {"fd_clips": 1.0, "drift_mean": 0.0}})
    result = subprocess.run([sys.executable, str(REPO / "benchmarks/frontier.py"), str(empty), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode != 0 and "no row with both fd_clips and drift_mean" in result.stderr
