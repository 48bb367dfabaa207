"""95% intervals and the tables that show them."""

import torch

from lightning_mf.metrics.intervals import mean_ci95, table


def test_mean_ci95_is_the_mean_with_two_standard_errors() -> None:
    mean, half = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert float(mean) == 2.5 and abs(float(half) - 1.96 * (5 / 3) ** 0.5 / 2) < 1e-12  # sample std of 1..4: sqrt(5/3)
    assert float(mean_ci95(torch.tensor([0.3]))[1]) == 0.0


def test_tables_show_each_figure_with_its_interval_and_mark_missing_ones() -> None:
    rows = {"real (held-out)": {"fd": 1.0, "fd_ci95": 0.05, "nfe": 3.0}, "few4": {"fd": 2.123456}}
    header, nfe, fd = table(rows, ["nfe", "fd"])
    assert header.split() == ["metric", "real", "(held-out)", "few4"]
    assert nfe.split() == ["nfe", "3", "-"] and fd.split() == ["fd", "1±0.05", "2.123"]
    assert len({len(header), len(nfe), len(fd)}) == 1  # aligned columns
