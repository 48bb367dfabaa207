"""Sharpness against drift: every generated row of some ``lightning-mf evaluate`` outputs on one scatter plot.

FD clips (lower: sharper, closer to real frames) on x, identity drift (lower: colours stay) on y, one point per
(file, mode) with its drift interval when the file has one. docs/benchmarks.md, "What stage 3's drift is", reads it:
on the tiny preset a sharper sampler drifts more, so a lower drift is worth something only at the same FD clips.

    python benchmarks/frontier.py runs/arms/*-eval.json runs/diag/*.json --out docs/figures/stage3_frontier.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SKIP = ("real", "copy first frame")  # the floor/ceiling rows: drift 0 by construction


def points(paths: list[Path]) -> list[tuple[str, str, float, float, float]]:
    """``(label, mode, fd_clips, drift, drift_ci95)`` of every generated row that has both figures."""
    out = []
    for path in paths:
        rows = json.loads(path.read_text())["rows"]
        for mode, row in rows.items():
            if mode.startswith(SKIP) or "fd_clips" not in row or "drift_mean" not in row:
                continue
            stem = path.stem.removesuffix("-eval")
            out.append((stem, mode, row["fd_clips"], row["drift_mean"], row.get("drift_mean_ci95", 0.0)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="evaluate --out JSON files")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    found = points(args.files)
    if not found:
        raise SystemExit("frontier.py: no row with both fd_clips and drift_mean in the given files")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, mode, fd, drift, ci in found:
        few = mode.startswith("few")
        ax.errorbar(fd, drift, yerr=ci, fmt="o" if few else "s", color="tab:red" if few else "tab:blue", ms=5, alpha=0.8, capsize=2)
        ax.annotate(f"{label} {mode}", (fd, drift), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("FD clips (lower: sharper frames)")
    ax.set_ylabel("identity drift (lower: colours stay)")
    ax.set_yscale("log")
    ax.plot([], [], "o", color="tab:red", label="Few mode")
    ax.plot([], [], "s", color="tab:blue", label="Multi mode (CFG 1)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"frontier.py: {len(found)} rows -> {args.out}")


if __name__ == "__main__":
    main()
