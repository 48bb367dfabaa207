"""95% intervals for evaluation figures, and the tables that show them: a number means something only with its
uncertainty over clips."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cell", "mean_ci95", "ratio_ci95", "table"]


def mean_ci95(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of per-clip values (N,) and the half-width of its 95% interval (1.96 standard errors; 0 for one clip)."""
    values = values.double()
    if values.numel() < 2:
        return values.mean(), torch.zeros((), dtype=values.dtype, device=values.device)
    return values.mean(), 1.96 * values.std() / values.numel() ** 0.5


def ratio_ci95(numerators: Tensor, denominators: Tensor) -> tuple[Tensor, Tensor]:
    """A pooled rate ``sum(num) / sum(den)`` over clips (N,) (e.g. vowel errors over vowels said) and the half-width
    of its 95% interval, with clips as the unit: the ratio estimator's standard error
    ``sqrt(sum((num_i - rate * den_i)^2) / (N (N - 1))) / mean(den)`` (0 for one clip)."""
    num, den = numerators.double(), denominators.double()
    rate = num.sum() / den.sum()
    if num.numel() < 2:
        return rate, torch.zeros((), dtype=rate.dtype, device=rate.device)
    n = num.numel()
    se = ((num - rate * den).square().sum() / (n * (n - 1))).sqrt() / den.mean()
    return rate, 1.96 * se


def cell(row: dict[str, float], metric: str) -> str:
    """A table cell: ``value ± half-width`` when ``row`` has ``<metric>_ci95``, the value alone when not, ``-`` when
    the row lacks the metric."""
    if metric not in row:
        return "-"
    half = row.get(f"{metric}_ci95")
    return f"{row[metric]:.4g}" if half is None else f"{row[metric]:.4g}±{half:.2g}"


def table(rows: dict[str, dict[str, float]], metrics: list[str]) -> list[str]:
    """Lines of a table: one line per metric, one column per row, each figure with its interval (:func:`cell`)."""
    cells = {m: [cell(row, m) for row in rows.values()] for m in metrics}
    first = max(len("metric"), *(len(m) for m in metrics)) + 2
    widths = [max(12, len(name) + 2, *(len(cells[m][i]) + 2 for m in metrics)) for i, name in enumerate(rows)]
    lines = ["metric".ljust(first) + "".join(name.rjust(w) for name, w in zip(rows, widths))]
    return lines + [m.ljust(first) + "".join(c.rjust(w) for c, w in zip(cells[m], widths)) for m in metrics]
