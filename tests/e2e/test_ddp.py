"""GenerationEval under 2-process DDP (gloo on CPU): no hang, rank 0 evaluates and logs, the other rank does not."""

import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCRIPT = Path(__file__).with_name("ddp_generation_eval.py")


@pytest.mark.slow
def test_generation_eval_under_two_process_ddp(tiny_shards: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_shards), str(tmp_path)], capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line.split() for line in result.stdout.splitlines() if line.startswith("rank "))
    assert [(rank, step) for _, rank, _, _, _, step, *_ in lines] == [("0", "4"), ("1", "4")]
    assert int(lines[0][7]) > 10 and int(lines[1][7]) == 0  # rank 0 scores every metric, rank 1 nothing
    events = EventAccumulator(str(tmp_path / "ddp")).Reload()
    assert [e.step for e in events.Scalars("eval/fd_frames_multi2")] == [2, 4]
