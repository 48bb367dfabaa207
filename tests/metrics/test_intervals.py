"""95% intervals and the tables that show them."""

import torch

from lightning_mf.metrics.intervals import mean_ci95, ratio_ci95, table


def test_mean_ci95_is_the_mean_with_two_standard_errors() -> None:
    mean, half = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert float(mean) == 2.5 and abs(float(half) - 1.96 * (5 / 3) ** 0.5 / 2) < 1e-12  # sample std of 1..4: sqrt(5/3)
    assert float(mean_ci95(torch.tensor([0.3]))[1]) == 0.0


def test_ratio_ci95_pools_the_rate_and_takes_clips_as_the_unit() -> None:
    errors, vowels = torch.tensor([1.0, 3.0, 0.0, 4.0]), torch.tensor([4.0, 4.0, 2.0, 6.0])
    rate, half = ratio_ci95(errors, vowels)
    # rate 8/16; residuals e - 0.5 n: -1, 1, -1, 1 -> se = sqrt(4 / 12) / 4
    assert float(rate) == 0.5 and abs(float(half) - 1.96 * (4 / 12) ** 0.5 / 4) < 1e-12
    assert float(ratio_ci95(errors * 0 + 2, vowels * 0 + 4)[1]) == 0.0  # every clip at the same rate
    assert float(ratio_ci95(errors[:1], vowels[:1])[1]) == 0.0


def test_tables_show_each_figure_with_its_interval_and_mark_missing_ones() -> None:
    rows = {"real (held-out)": {"fd": 1.0, "fd_ci95": 0.05, "nfe": 3.0}, "few4": {"fd": 2.123456}}
    header, nfe, fd = table(rows, ["nfe", "fd"])
    assert header.split() == ["metric", "real", "(held-out)", "few4"]
    assert nfe.split() == ["nfe", "3", "-"] and fd.split() == ["fd", "1±0.05", "2.123"]
    assert len({len(header), len(nfe), len(fd)}) == 1  # aligned columns
