"""The README's main command (extracted from README.md, not copied) runs the whole method with a small budget:
shards, four stages, the evaluation table, an mp4 with its audio track, TensorBoard events; a second run reuses it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import REPO, readme_commands
from PIL import Image

from lightning_mf.data.media import decode_mp4, decode_wav
from lightning_mf.tools.pipeline import STAGES, _evaluation_of

SMALL = ["--num-clips", "40", "--steps", "[3, 3, 3, 2]", "--eval-clips", "2", "--duration", "3"]


def setup_commands() -> list[list[str]]:
    """The commands of README.md's "Two commands on a fresh machine" block."""
    return readme_commands("Two commands on a fresh machine")


def test_readme_names_the_two_scripts() -> None:
    assert setup_commands() == [["bash", "scripts/demo.sh"], ["bash", "scripts/test.sh"]]
    assert (REPO / ".ci" / "run").read_text().count("scripts/test.sh") >= 1


@pytest.mark.slow
def test_readme_main_command_runs_the_pipeline_and_reruns_from_its_results(tmp_path: Path) -> None:
    demo = setup_commands()[0]
    args = demo + ["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), *SMALL]
    first = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = tmp_path / "runs"
    table = first.stdout[first.stdout.rindex("=== done in"):]
    assert re.search(r"metric\s+real \(held-out\)\s+real, other characters\s+copy first frame\s+copy first frame \+ grain\s+few4\s+multi50", table)
    assert re.search(r"nfe_per_chunk(\s+-){4}\s+4\s+100", table)
    for metric in ("fd_frames", "fd_motion", "fd_audio", "oracle_sync_corr", "video_timing_r", "audio_timing_r"):
        assert re.search(rf"^{metric}(\s+\S+){{6}}$", table, flags=re.M), metric
    assert f"generated clip: {runs / 'generated.mp4'}" in table and f"tensorboard --logdir {runs}" in table

    video = decode_mp4((runs / "generated.mp4").read_bytes())
    assert video.shape == (48, 32, 32, 3)  # 3 s at 16 fps: longer than 2 s clips
    # how far the clip strays from its character, beside the real clip's own figure (a talking face: a few levels)
    found = re.search(r"mean \|frame - first frame\| ([\d.]+) levels of 255 \(the real clip of that frame and transcript: ([\d.]+)\)", table)
    assert found, table
    first = np.asarray(Image.open(runs / "inputs" / "first_frame.png"))
    assert abs(float(found.group(1)) - np.abs(video.astype(float) - first).mean()) < 2.0  # the mp4 is lossy
    assert 0 < float(found.group(2)) < 10
    assert decode_wav((runs / "generated.wav").read_bytes())[0].shape == (48000,)
    with av.open(str(runs / "generated.mp4")) as container:  # the muxed AAC track: the same 3 s, padded to 1024-sample frames
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert 48000 <= samples < 48000 + 2048
    for stage in STAGES:
        assert list((runs / stage).glob("events.out.tfevents.*")), stage
        assert (runs / stage / "checkpoints" / "last.ckpt").is_file(), stage

    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(f"=== {stage}: reusing" in again.stdout for stage in STAGES)
    assert f"=== evaluation: reusing {runs / 'evaluation.json'}" in again.stdout  # the same checkpoint: not scored again
    assert re.search(r"nfe_per_chunk(\s+-){4}\s+4\s+100", again.stdout[again.stdout.rindex("=== done in"):])  # its table
    assert "reusing" in again.stdout.split("=== video_pretrain")[0]  # the shards too


def test_an_evaluation_is_reused_only_for_the_same_unchanged_checkpoint_data_and_clips(tmp_path: Path) -> None:
    ckpt, report = tmp_path / "last.ckpt", tmp_path / "evaluation.json"
    ckpt.write_bytes(b"weights")
    rows = {"few4": {"fd_frames": 1.0}, "multi50": {"fd_frames": 2.0}}
    report.write_text(json.dumps({"ckpt": str(ckpt), "data": "data/tiny", "num_clips": 4, "rows": rows}))
    os.utime(ckpt, (100, 100))  # the checkpoint is older than the report
    assert _evaluation_of(report, ckpt, "data/tiny", 4) == rows
    assert _evaluation_of(report, ckpt, "data/other", 4) is None
    assert _evaluation_of(report, ckpt, "data/tiny", 8) is None
    assert _evaluation_of(report, tmp_path / "other.ckpt", "data/tiny", 4) is None
    os.utime(ckpt)  # trained on since (resumed): newer than the report
    os.utime(report, (100, 100))
    assert _evaluation_of(report, ckpt, "data/tiny", 4) is None
    os.utime(report)
    report.write_text(json.dumps({"ckpt": str(ckpt), "data": "data/tiny", "num_clips": 4, "rows": {"few4": {}}}))
    assert _evaluation_of(report, ckpt, "data/tiny", 4) is None  # a mode missing
    assert _evaluation_of(tmp_path / "none.json", ckpt, "data/tiny", 4) is None
