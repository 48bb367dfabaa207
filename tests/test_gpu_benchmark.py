"""benchmarks/gpu.sh --cpu --tiny: the GPU check rehearsed on the CPU, so the script a lent GPU runs cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from gpu import ROWS  # noqa: E402


@pytest.mark.slow
def test_the_gpu_check_writes_every_row_on_the_cpu(tmp_path: Path) -> None:
    report, rows_file = tmp_path / "benchmarks.md", tmp_path / "rows.json"
    report.write_text("# Benchmarks\n\nkept\n")
    env = os.environ | {"PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--cpu", "--tiny", "--write", str(report), "--json", str(rows_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "torch " in done.stdout and "jsonargparse " in done.stdout  # versions checked before measuring
    text = report.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and "<!-- gpu -->" in text and "CPU rehearsal" in text
    rows = json.loads(rows_file.read_text())
    assert tuple(rows) == ROWS and all(f"| {name} |" in text for name in ROWS)
    assert not [name for name, row in rows.items() if "error" in row], rows
    for stage in ("stage 2 (joint)", "stage 3 (Mutual Forcing)", "stage 2, FSDP2 on 1 device", "stage 2, activation checkpointing"):
        row = rows[stage]
        assert row["step_ms"] > 0 and row["tokens_per_s"] > 0 and row["tflop_per_step"] > 0 and row["peak_gib"] > 0
    assert rows["stage 2, activation checkpointing"]["tflop_per_step"] > rows["stage 2 (joint)"]["tflop_per_step"]  # recomputed forward
    assert rows["attention: flex vs SDPA"]["max_out_diff"] < 1e-4
    for size in ("streaming 64x64", "streaming 192x336"):
        row = rows[size]
        assert row["few4_fps"] > row["few8_fps"] > 0 and row["few4_first_chunk_ms"] > 0
        assert row["cache_dtype"] == "bfloat16" and row["cache_mib_per_chunk"] > 0
