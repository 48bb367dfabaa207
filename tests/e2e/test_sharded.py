"""FSDP2 (ModelParallelStrategy) over 2 CPU processes (gloo): the same result as 1 process with the same global batch
split into 2 micro-batches, validation sees each clip once, and a sharded checkpoint resumes the run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_mf.cli import run
from lightning_mf.lit import MutualForcing
from lightning_mf.models import TowerConfig

TOWER = TowerConfig(dim=32, depth=2, heads=2, vocab_size=32)  # as in sharded_fit.py

SCRIPT = Path(__file__).with_name("sharded_fit.py")


def _run(tiny_shards: Path, out: Path, stage: str, mode: str, steps: int, ckpt: Path | None = None) -> dict[str, torch.Tensor]:
    args = [sys.executable, str(SCRIPT), str(tiny_shards), str(out), stage, mode, str(steps)] + ([str(ckpt)] if ckpt else [])
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    (out / "output.txt").write_text(result.stdout + result.stderr)
    return torch.load(out / "weights.pt")


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(a, key=lambda k: (a[k] - b[k]).abs().max())
    assert torch.allclose(a[worst], b[worst], atol=atol, rtol=0), f"{worst}: {(a[worst] - b[worst]).abs().max()}"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["video", "joint", "mutual_forcing"])
def test_two_fsdp_processes_equal_one_process_with_two_micro_batches(tiny_shards: Path, tmp_path: Path, stage: str) -> None:
    """Plain SGD, no clipping, every weight at std 0.2: the update is the gradient itself, so a gradient summed instead
    of averaged over ranks or over micro-batches (both 2 here) doubles it, and every path through the model counts."""
    sharded = _run(tiny_shards, tmp_path / "sharded", stage, "sharded-sgd", 3)
    single = _run(tiny_shards, tmp_path / "single", stage, "single-sgd", 3)
    initial = torch.load(tmp_path / "single" / "ckpt" / "epoch=0-step=1.ckpt", weights_only=False)["state_dict"]
    moved = max((initial[k] - single[k]).abs().max() for k in single if k.startswith("net."))
    assert moved > 1e-3, "the run did not train"  # SGD steps move weights far beyond the tolerance below
    _assert_close(sharded, single, atol=1e-5)
    keys = [line for f in sorted((tmp_path / "sharded").glob("val_keys-*.txt")) for line in f.read_text().split()]
    assert len(keys) == 4 and len(set(keys)) == 4, keys  # the 4 held-out clips, each on exactly one rank
    assert all((tmp_path / "sharded" / f"val_keys-{rank}.txt").read_text() for rank in (0, 1))
    if stage == "joint":  # GenerationEval under FSDP: all ranks generate, rank 0 scores; same numbers as 1 process
        scores = [(tmp_path / mode / "eval.txt").read_text().split("\n") for mode in ("sharded", "single")]
        sharded_scores, single_scores = ({k: float(v) for k, v in map(str.split, lines)} for lines in scores)
        assert len(sharded_scores) > 5 and sharded_scores.keys() == single_scores.keys()
        for key, value in sharded_scores.items():
            assert math.isclose(value, single_scores[key], rel_tol=1e-3, abs_tol=1e-4), (key, value, single_scores[key])


@pytest.mark.slow
def test_sharded_checkpoint_resumes_the_run(tiny_shards: Path, tmp_path: Path) -> None:
    """4 steps straight == 2 steps + resume from the sharded (distributed) step-2 checkpoint: weights, EMA, fake
    score and both optimizers come back (the checkpoint is at an epoch end, so the data restarts alike)."""
    straight = _run(tiny_shards, tmp_path / "straight", "mutual_forcing", "sharded", 4)
    _run(tiny_shards, tmp_path / "resumed", "mutual_forcing", "sharded", 2)
    checkpoint = tmp_path / "resumed" / "ckpt" / "epoch=0-step=2.ckpt"
    assert checkpoint.is_dir(), "ModelParallelStrategy writes a distributed checkpoint directory"
    resumed = _run(tiny_shards, tmp_path / "resumed", "mutual_forcing", "sharded", 4, checkpoint)
    _assert_close(straight, resumed, atol=1e-6)

    # the next stage, evaluate and generate read one file: `lightning-mf consolidate` writes it
    folder = tmp_path / "straight" / "ckpt" / "last.ckpt"
    model = MutualForcing(tower=TOWER)
    with pytest.raises(ValueError, match="is a sharded checkpoint folder; run `lightning-mf consolidate --ckpt"):
        model.read_net(str(folder), "model.init_args.init_ckpt", model.seq.modalities)
    single_file = Path(run(["consolidate", "--ckpt", str(folder)]))
    assert single_file == folder.with_name("last.ckpt.consolidated")
    with pytest.raises(FileExistsError, match="exists; remove it or choose another --out"):
        run(["consolidate", "--ckpt", str(folder)])  # never overwrites
    with pytest.raises(ValueError, match="is not a sharded checkpoint folder"):
        run(["consolidate", "--ckpt", str(single_file)])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(["consolidate", "--ckpt", str(folder.with_name("missing.ckpt"))])
    consolidated = torch.load(single_file, weights_only=False)
    assert consolidated["global_step"] == 4 and len(consolidated["optimizer_states"]) == 2
    _assert_close(consolidated["state_dict"], straight, atol=0.0)
    weights = model.read_net(str(single_file), "model.init_args.init_ckpt", model.seq.modalities)
    assert torch.equal(weights["towers.video.embed.weight"], straight["ema.towers.video.embed.weight"])


@pytest.mark.slow
def test_a_consolidated_cluster_checkpoint_resumes_in_one_process(tiny_shards: Path, tmp_path: Path) -> None:
    """A 2-rank run's step-2 checkpoint, consolidated, resumes in one process with 2 micro-batches per step: its
    optimizer states (saved by parameter name) land on the right parameters, equal to those of a 1-process run at
    step 2, and the run warns that its data position counts the old layout's batches."""
    _run(tiny_shards, tmp_path / "sharded", "mutual_forcing", "sharded", 2)
    single_file = Path(run(["consolidate", "--ckpt", str(tmp_path / "sharded" / "ckpt" / "epoch=0-step=2.ckpt")]))
    _run(tiny_shards, tmp_path / "single", "mutual_forcing", "single", 2)
    theirs = torch.load(single_file, weights_only=False)
    ours = torch.load(tmp_path / "single" / "ckpt" / "epoch=0-step=2.ckpt", weights_only=False)
    assert (theirs["lightning_mf_state"]["batch_layout"], ours["lightning_mf_state"]["batch_layout"]) == ([2, 1], [1, 2])
    for by_name, by_index in zip(theirs["optimizer_states"], ours["optimizer_states"], strict=True):  # main, fake score
        names = [n for group in by_name["param_groups"] for n in group["params"]]
        indices = [i for group in by_index["param_groups"] for i in group["params"]]
        assert len(names) == len(indices) and isinstance(names[0], str)
        for name, index in zip(names, indices):
            for moment in ("exp_avg", "exp_avg_sq"):
                assert torch.allclose(by_name["state"][name][moment], by_index["state"][index][moment], atol=1e-6), name

    _run(tiny_shards, tmp_path / "single", "mutual_forcing", "single", 4, single_file)
    output = (tmp_path / "single" / "output.txt").read_text()
    assert "rank 0 finished at step 4" in output
    assert "written by 2 rank(s) x 1 micro-batch(es) per step with 1 x 2" in " ".join(output.split())


@pytest.mark.slow
def test_bf16_and_activation_checkpointing_train_mutual_forcing_sharded(tiny_shards: Path, tmp_path: Path) -> None:
    """The multi-node recipe (bf16 autocast + per-layer recomputation) on 2 CPU processes: it trains, stays finite and
    ends near the fp32 result (bf16 rounding only)."""
    low = _run(tiny_shards, tmp_path / "bf16", "mutual_forcing", "sharded-bf16", 2)
    full = _run(tiny_shards, tmp_path / "fp32", "mutual_forcing", "sharded", 2)
    assert all(torch.isfinite(v).all() for v in low.values())
    assert all(v.dtype == full[k].dtype for k, v in low.items()), "parameters stay fp32 (autocast computes in bf16)"
    _assert_close(low, full, atol=5e-4)
    assert any(not torch.equal(low[k], full[k]) for k in low), "bf16 made no difference: was it on?"
