"""Runs side by side: TensorBoard scalars by run and the paper's ablation table (used by notebooks/ablations.ipynb).

The rows come from the ``eval/<metric>_<mode>`` scalars that :class:`~lightning_mf.callbacks.GenerationEval` logs,
read with TensorBoard's own reader and taken at each run's last evaluation. The reference experiment
(``benchmarks/reference.sh``) is read from the ``reference.json`` it writes beside its runs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

__all__ = ["ABLATIONS", "METRICS", "Ablation", "ablation_table", "drift_by_window", "load_reference", "load_runs", "read_scalars",
           "to_markdown"]

METRICS = ("fd_frames", "fd_clips", "fd_audio", "oracle_sync_corr", "drift_mean")


@dataclass(frozen=True)
class Ablation:
    """One row: a question of the paper's ablations, answered by one mode of one run."""

    group: str
    name: str
    run: str
    mode: str


ABLATIONS = (
    Ablation("steps", "Few 1", "mutual_forcing", "few1"),
    Ablation("steps", "Few 2", "mutual_forcing", "few2"),
    Ablation("steps", "Few 4", "mutual_forcing", "few4"),
    Ablation("steps", "Few 8", "mutual_forcing", "few8"),
    Ablation("steps", "Multi 50 + CFG", "mutual_forcing", "multi50"),
    Ablation("objectives", "ShortCut only", "shortcut_only", "few4"),
    Ablation("objectives", "DMD only", "dmd_only", "few4"),
    Ablation("objectives", "ShortCut + DMD", "mutual_forcing", "few4"),
    Ablation("history", "teacher forcing (real history)", "teacher_forcing", "few4"),
    Ablation("history", "self-rollout (Few mode)", "mutual_forcing", "few4"),
)


def read_scalars(run: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder: ``{tag: [(step, value), ...]}``, all events kept (TensorBoard's reader keeps a
    sample of 10,000 per tag unless told otherwise)."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def load_runs(root: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The scalars of every run under ``root`` (each folder holding event files), keyed by folder name."""
    root = Path(root)
    folders = sorted({path.parent for path in root.rglob("events.out.tfevents.*")})
    if not folders:
        raise FileNotFoundError(f"no TensorBoard event files under {root}; make the runs first (notebooks/make_ablation_runs.sh)")
    return {folder.relative_to(root).as_posix() if folder != root else root.name: read_scalars(folder) for folder in folders}


def _last(scalars: dict[str, list[tuple[int, float]]] | None, tag: str) -> float:
    points = (scalars or {}).get(tag)
    return points[-1][1] if points else math.nan


def ablation_table(runs: dict[str, dict[str, list[tuple[int, float]]]], ablations: tuple[Ablation, ...] = ABLATIONS) -> list[dict[str, object]]:
    """One row per ablation with the last evaluated value of each metric (NaN where the run or tag is missing)."""
    rows = []
    for ablation in ablations:
        scalars = runs.get(ablation.run)
        row: dict[str, object] = {"group": ablation.group, "ablation": ablation.name, "run": ablation.run, "mode": ablation.mode}
        row |= {metric: _last(scalars, f"eval/{metric}_{ablation.mode}") for metric in METRICS}
        rows.append(row)
    return rows


def drift_by_window(scalars: dict[str, list[tuple[int, float]]], mode: str) -> list[float]:
    """Identity drift of each window of the generated clips (``eval/drift_w<k>_<mode>``), in window order."""
    pattern = re.compile(rf"eval/drift_w(\d+)_{re.escape(mode)}$")
    windows = sorted((int(m.group(1)), tag) for tag in scalars if (m := pattern.match(tag)))
    return [_last(scalars, tag) for _, tag in windows]


def to_markdown(rows: list[dict[str, object]]) -> str:
    """The rows as a Markdown table (numbers to 4 significant digits)."""
    columns = list(rows[0])
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def load_reference(path: str | Path) -> dict[str, object]:
    """The reference experiment's results: ``targets`` ([claim, measured, met]), ``curves`` ({run: [{step, seconds,
    metric: value}]}), ``finals`` and ``long``, as ``benchmarks/reference.py report`` wrote them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run bash benchmarks/reference.sh (about 2 hours on 2 CPU cores) first")
    return json.loads(path.read_text())
