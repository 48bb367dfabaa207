"""Every `lightning-mf` command of README.md's bash blocks runs, read from the README (not copied here), in a
scratch folder laid out like the repository, with smaller budgets appended (later flags win); then `validate`,
`test` and `predict` run on every config of `configs/tiny/` with the checkpoints those commands trained, and the
README's ablation script makes real runs that the notebook reads."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import REPO, execute_notebook, readme_blocks, readme_commands
from PIL import Image

from lightning_mf.analysis import ABLATIONS
from lightning_mf.callbacks import GenerationEval
from lightning_mf.cli import TRAINER_VERBS, run
from lightning_mf.data.media import decode_mp4, encode_mp4
from lightning_mf.data.shards import read_index
from lightning_mf.data.synthetic import PRESETS, synthesize_clip

STAGES = sorted(p.stem for p in (REPO / "configs" / "tiny").glob("*.yaml"))
FIT_ORDER = {"video_pretrain": 0, "audio_pretrain": 0, "syncnet": 0, "joint": 1}  # the rest start from joint
SMALLER = {  # appended to each README command of that verb: a few steps and batches instead of hundreds
    "fit": ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1"],
    "validate": ["--trainer.limit_val_batches", "1"],
    "test": ["--trainer.limit_test_batches", "1"],
    "predict": ["--trainer.limit_predict_batches", "1"],
    "evaluate": ["--num-clips", "2", "--window-chunks", "4"],  # quarter clips: whole ones are tests/e2e/test_evaluate.py's
}
MULTI_STAGES = {"video_pretrain", "audio_pretrain", "joint"}  # their predict samples Multi 50 + CFG: 8 steps here
QUIET = ["--trainer.enable_progress_bar", "false"]
NOT_RUN = {  # run elsewhere in the suite; here their arguments are only parsed (--print_config)
    "consolidate": "needs the sharded checkpoint of a multi-process run (tests/e2e/test_sharded.py makes one)",
    "pipeline": "`bash scripts/demo.sh` runs it (tests/e2e/test_pipeline.py)",
}


def lightning_mf_commands() -> list[list[str]]:
    """The arguments of every ``lightning-mf ...`` command in README.md's bash blocks."""
    return [words[1:] for words in readme_commands() if words[0] == "lightning-mf"]


@pytest.mark.parametrize("snippet", readme_blocks("yaml"), ids=lambda text: text.split(":")[0] + "...")
def test_readme_yaml_snippets_are_config_overlays_the_cli_accepts(snippet: str, tmp_path: Path) -> None:
    """Each YAML example, laid over a stage config, parses and lands in the resolved config as written."""
    (tmp_path / "snippet.yaml").write_text(snippet)
    config = REPO / "configs" / "tiny" / "mutual_forcing.yaml"
    _, printed = _run(["fit", "--config", str(config), "--config", str(tmp_path / "snippet.yaml"), "--print_config"])
    resolved, wanted = yaml.safe_load(printed), yaml.safe_load(snippet)
    if "model" in wanted:
        assert resolved["model"]["init_args"]["codec"] | wanted["model"]["init_args"]["codec"] == resolved["model"]["init_args"]["codec"]
    if "trainer" in wanted:
        assert [c["class_path"] for c in resolved["trainer"]["callbacks"]] == [c["class_path"] for c in wanted["trainer"]["callbacks"]]
        assert resolved["trainer"]["callbacks"][0]["init_args"]["every_n_steps"] == wanted["trainer"]["callbacks"][0]["init_args"]["every_n_steps"]


def _stage(args: list[str]) -> str:
    return Path(args[args.index("--config") + 1]).stem


def _smaller(args: list[str]) -> list[str]:
    """What a README command of this verb gets appended: smaller budgets, no progress bar, fewer sampling steps."""
    extra = SMALLER.get(args[0], []) + (QUIET if args[0] in TRAINER_VERBS else [])
    if args[0] == "predict" and _stage(args) in MULTI_STAGES:
        extra += ["--model.init_args.sampler.steps", "8"]
    return extra


def _order(args: list[str]) -> int:
    """Shards first, then the fits in stage order; everything else reads what those wrote (stable: README order)."""
    if args[:2] == ["shards", "synthetic"]:
        return 0
    if args[0] == "fit" and "--print_config" not in args:
        return 1 + FIT_ORDER.get(_stage(args), 2)
    return 4


def _run(args: list[str]) -> tuple[Any, str]:
    """Run in-process; return the result and what it printed (``--print_config`` exits 0 after printing)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            result = run(args)
        except SystemExit as exit:
            assert exit.code in (0, None), f"lightning-mf {shlex.join(args)} exited with {exit.code}"
            result = None
    return result, out.getvalue()


def _placeholders(root: Path) -> None:
    """The files the README's examples name: talking-head videos for `shards folder`, a face and a transcript."""
    spec = PRESETS["tiny"].spec
    (root / "VIDEOS").mkdir()
    for seed in (500, 501):
        clip = synthesize_clip(seed, spec, 6.0)
        encode_mp4(clip.video, spec.fps, audio=clip.audio, sample_rate=spec.sample_rate, target=root / "VIDEOS" / f"talk{seed}.mp4")
    face = synthesize_clip(502, spec, 1.0)
    Image.fromarray(face.video[0]).save(root / "face.png")
    (root / "words.json").write_text(json.dumps(face.meta["transcript"]))


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, tuple[Any, str]]]]:
    """Every README command, run once in a scratch folder with ``configs/`` linked in; results by command line."""
    root = tmp_path_factory.mktemp("readme")
    (root / "configs").symlink_to(REPO / "configs")
    _placeholders(root)
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        # Each README fit would end with GenerationEval's end-of-fit evaluation (Few 4 and Multi 50 + CFG on 4 clips,
        # about 13 s a fit, 65 s in all); that is tested in tests/callbacks and under DDP. The callback still starts
        # (its conditions and reference rows), so a config it cannot run with still fails here.
        patch.setattr(GenerationEval, "on_fit_end", lambda self, trainer, module: None)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: more threads only contend on a busy 2-core machine
        try:
            for args in sorted(lightning_mf_commands(), key=_order):
                if args[0] in NOT_RUN:
                    results[shlex.join(args)] = _run([*args, "--print_config"])
                    continue
                results[shlex.join(args)] = _run(args + ([] if "--print_config" in args else _smaller(args)))
        finally:
            torch.set_num_threads(threads)
    yield root, results


def _result(results: dict[str, tuple[Any, str]], *words: str) -> tuple[Any, str]:
    """The result of the one README command containing all ``words``."""
    found = [value for line, value in results.items() if all(w in shlex.split(line) for w in words)]
    assert len(found) == 1, f"README has {len(found)} commands with {words}"
    return found[0]


@pytest.mark.slow
def test_readme_commands_run_and_leave_what_they_promise(readme_runs: tuple[Path, dict[str, tuple[Any, str]]]) -> None:
    root, results = readme_runs
    assert len(results) >= 15, "fewer lightning-mf commands in README.md than expected: was a block's language lost?"
    verbs = {line.split()[0] for line in results}
    assert {"fit", "validate", "test", "predict", "shards", "evaluate", "generate", *NOT_RUN} <= verbs

    _, printed = _result(results, "fit", "--print_config")
    assert yaml.safe_load(printed)["model"]["class_path"] == "lightning_mf.lit.JointTraining"

    index = read_index(root / "data" / "tiny")
    train, val = index["splits"]["train"]["clips"], index["splits"]["val"]["clips"]
    assert (train, val) == (64, 64)  # 64 held out: evaluate's 32 clips and 32 for its reference rows
    assert f"data/tiny: {train} train clips in 1 shard(s), {val} val clips" in _result(results, "shards", "inspect")[1]
    index = read_index(root / "data" / "mine")  # two 6 s videos cut into one 5 s clip each, at 25 fps and 64x64
    assert (index["fps"], index["height"], index["frames_per_clip"], index["sources"]) == (25, 64, 125, 2)

    for line in results:
        if line.startswith("fit --config") and "--print_config" not in line:
            run_dir = root / "runs" / "tiny" / _stage(line.split())
            assert (run_dir / "checkpoints" / "last.ckpt").is_file(), line
            assert list(run_dir.glob("events.out.tfevents.*")), line
            saved = yaml.safe_load((run_dir / "config.yaml").read_text())  # the training config, kept by later verbs
            assert saved["trainer"]["max_steps"] == 2, line

    validated = _result(results, "validate")[0].trainer.callback_metrics
    assert math.isfinite(float(validated["val/loss"])) and float(validated["val/loss"]) > 0
    assert float(_result(results, "test")[0].trainer.callback_metrics["test/loss"]) > 0
    assert (root / "runs" / "tiny" / "joint" / "config-test.yaml").is_file()

    rows = _result(results, "evaluate", "[multi50, multi25heun]")[0]
    assert list(rows) == ["real (held-out)", "real, other characters", "copy first frame", "copy first frame + grain", "multi50", "multi25heun"]
    report = json.loads((root / "report.json").read_text())
    assert (report["num_clips"], report["window_chunks"]) == (2, 4)
    with_sync = _result(results, "evaluate", "--syncnet")[0]
    assert {"lse_d", "lse_c", "av_offset"} <= set(with_sync["multi50"])

    timing = _result(results, "generate")[0]
    assert timing["nfe_per_chunk"] == 4
    assert decode_mp4((root / "out" / "clip.mp4").read_bytes()).shape == (160, 32, 32, 3)  # --duration 10 at 16 fps

    assert yaml.safe_load(_result(results, "pipeline")[1])["steps"] == [160, 160, 160, 32]
    assert yaml.safe_load(_result(results, "consolidate")[1])["ckpt"] == "runs/base/joint/checkpoints/last.ckpt"


def _verb(root: Path, verb: str, stage: str) -> Any:
    args = [verb, "--config", f"configs/tiny/{stage}.yaml", "--ckpt_path", f"runs/tiny/{stage}/checkpoints/last.ckpt"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        return _run(args + _smaller(args))[0].trainer


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_validate_test_and_predict_work_on_every_stage(readme_runs: tuple[Path, dict[str, tuple[Any, str]]], stage: str) -> None:
    """Same split, same seeds: ``test`` reproduces ``validate``; ``predict`` writes media (sync scores for SyncNet)."""
    root, _ = readme_runs
    loss = "sync_loss" if stage == "syncnet" else "loss"
    validated = float(_verb(root, "validate", stage).callback_metrics[f"val/{loss}"])
    tested = float(_verb(root, "test", stage).callback_metrics[f"test/{loss}"])
    assert math.isfinite(validated) and validated > 0 and tested == pytest.approx(validated, rel=1e-6)

    returned = _verb(root, "predict", stage).predict_loop.predictions[0]  # the first (only) batch
    predictions = root / "runs" / "tiny" / stage / "predictions"
    if stage == "syncnet":
        rows = [json.loads(line) for line in (predictions / "sync.jsonl").read_text().splitlines()]
        assert rows == returned and len(rows) == 8  # one line per held-out window of the first batch (of 8)
        assert all(abs(row["av_offset"]) <= 5 and row["lse_c"] >= 0 for row in rows)
    else:
        written = [root / p for p in returned]  # relative to the run's working directory
        kinds = {"video_pretrain": {".mp4"}, "audio_pretrain": {".wav"}}.get(stage, {".mp4", ".wav"})
        assert {p.suffix for p in written} == kinds and len(written) == 8 * len(kinds)  # the first batch of 8
        assert all(p.parent == predictions and p.is_file() for p in written)
        for video in (p for p in written if p.suffix == ".mp4"):
            assert decode_mp4(video.read_bytes()).shape == (8, 32, 32, 3)  # a window: 4 chunks of 2 frames
    assert (root / "runs" / "tiny" / stage / "config.yaml").is_file()  # the fit config survives the other verbs
    assert yaml.safe_load((root / "runs" / "tiny" / stage / "config.yaml").read_text())["trainer"]["max_steps"] == 2


@pytest.mark.slow
def test_the_ablation_script_makes_the_runs_the_notebook_reads(
    readme_runs: tuple[Path, dict[str, tuple[Any, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = readme_runs
    script = next(words for words in readme_commands() if words[:2] == ["bash", "notebooks/make_ablation_runs.sh"])
    assert script[2:] == ["100"]  # STEPS; the test runs 1 (evaluated on 2 clips), from the README commands' joint and shards
    out = root / "runs" / "ablations"
    joint, data = root / "runs" / "tiny" / "joint" / "checkpoints" / "last.ckpt", root / "data" / "tiny"
    done = subprocess.run([*script[:2], "1", str(joint), str(data), str(out), "2"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted({a.run for a in ABLATIONS})

    monkeypatch.setenv("LMF_ABLATION_RUNS", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(REPO / "notebooks")
    table = execute_notebook(REPO / "notebooks" / "ablations.ipynb")["table"]
    assert [row["ablation"] for row in table] == [a.name for a in ABLATIONS]
    assert all(math.isfinite(row["fd_frames"]) and math.isfinite(row["fd_audio"]) for row in table)  # evaluated at step 1
