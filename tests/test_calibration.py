"Temperature scaling and reliability plots (CPU, fast, no display needed)."
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cskd_fastai.metrics.calibration import (apply_temperature, bin_stats, confidence_histogram, fit_temperature,
                                     reliability_diagram)
from cskd_fastai.metrics import calibration_error


def calibrated_logits(seed: int, n: int = 4000, c: int = 10):
    "Logits whose softmax is the true label distribution (targets are drawn from it), so T = 1 is optimal."
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    u = torch.rand(n, 1, generator=g, dtype=torch.float64)
    targets = (z.softmax(1).cumsum(1) < u).sum(1).clamp_max(c - 1)  # inverse-CDF sampling, seeded
    return z, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_fit_temperature_recovers_scale(seed, scale):
    z, targets = calibrated_logits(seed)
    logits = (z * scale).float()  # scale 3: over-confident; 0.5: under-confident
    T = fit_temperature(logits, targets)
    assert isinstance(T, float) and T > 0
    assert T == pytest.approx(scale, rel=0.10)
    nll_raw = F.cross_entropy(logits.double(), targets)
    nll_cal = F.nll_loss(apply_temperature(logits, T).double().log(), targets)
    assert nll_cal < nll_raw
    assert float(calibration_error(logits / T, targets)) < float(calibration_error(logits, targets))


def test_fit_temperature_is_the_nll_minimum():
    z, targets = calibrated_logits(5, n=1000)
    logits = z * 3
    T = fit_temperature(logits, targets)
    def nll_at(t): return float(F.cross_entropy(logits / t, targets))
    assert nll_at(T) <= min(nll_at(T * 0.98), nll_at(T * 1.02))


def test_fit_temperature_separable_data_stays_finite():
    logits = torch.eye(4).repeat(5, 1) * 10  # every prediction right: the NLL keeps falling as T -> 0
    T = fit_temperature(logits, torch.arange(4).repeat(5))
    assert 0 < T < 1


def test_apply_temperature():
    logits = torch.randn(16, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(apply_temperature(logits, 1.0), logits.softmax(-1), rtol=0, atol=0)
    torch.testing.assert_close(apply_temperature(logits, 2.5), (logits / 2.5).softmax(-1))
    assert apply_temperature(logits.half(), 1.0).dtype == torch.float32
    assert apply_temperature(logits.double(), 1.0).dtype == torch.float64
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            apply_temperature(logits, bad)


def test_fit_temperature_validates():
    with pytest.raises(ValueError, match="targets of shape"):
        fit_temperature(torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_iter"):
        fit_temperature(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), max_iter=0)


@pytest.mark.parametrize("n_bins", [15, 10])
def test_bin_stats_consistent_with_ece(n_bins):
    z, targets = calibrated_logits(0, n=500)
    logits = z * 3
    s = bin_stats(logits, targets, n_bins)
    assert s["count"].sum() == 500 and s["count"].shape == (n_bins,) and len(s["edges"]) == n_bins + 1
    full = s["count"] > 0
    assert np.isnan(s["accuracy"][~full]).all()
    ece = (s["count"][full] / 500 * np.abs(s["accuracy"][full] - s["confidence"][full])).sum()
    assert ece == pytest.approx(s["ece"], abs=1e-12)
    assert s["ece"] == pytest.approx(float(calibration_error(logits, targets, n_bins)), abs=1e-12)
    # mean confidence of a bin lies inside it (last bin closed at 1.0)
    lo, hi = s["edges"][:-1][full], s["edges"][1:][full]
    assert (s["confidence"][full] >= lo).all() and (s["confidence"][full] <= hi).all()


def test_bin_stats_saturated_confidence_in_last_bin():
    logits = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0]])
    s = bin_stats(logits, torch.tensor([0, 0]), n_bins=15)
    assert s["count"][-1] == 2 and s["count"].sum() == 2
    assert s["accuracy"][-1] == 0.5 and s["confidence"][-1] == 1.0


def test_plots_return_axes_and_write_png(tmp_path):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    z, targets = calibrated_logits(1, n=800)
    ax = reliability_diagram(z * 3, targets, title="over-confident")
    assert isinstance(ax, Axes) and ax.get_title() == "over-confident"
    assert any(t.get_text().startswith("ECE = ") for t in ax.get_legend().get_texts())
    ax.figure.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # on caller-supplied axes: draws there, side by side with the histogram
    fig = Figure(figsize=(8, 4))
    left, right = fig.subplots(1, 2)
    assert reliability_diagram(z, targets, n_bins=10, ax=left) is left
    assert confidence_histogram(z, targets, n_bins=10, ax=right) is right
    assert len(right.patches) == 10
    fig.savefig(tmp_path / "both.png")
    assert (tmp_path / "both.png").stat().st_size > 1000


# ---- the default temperature: only where the validation data supports it --------------------------------------
def test_checked_fit_refuses_a_temperature_fitted_on_one_error():
    from cskd_fastai.metrics.calibration import fit_temperature_checked
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (189,), generator=g)
    z = torch.randn(189, 10, generator=g) + 6 * torch.nn.functional.one_hot(y, 10)
    z[0] = -z[0]                                         # exactly one confident mistake, as on the quickstart
    assert int((z.argmax(1) != y).sum()) == 1
    fit = fit_temperature_checked(z, y)
    assert not fit.trusted and fit.T == 1.0 and fit.n_errors == 1 and "only 1 of 189" in fit.reason
    assert fit.fitted == pytest.approx(fit_temperature(z, y))


def test_checked_fit_trusts_a_supported_temperature_and_cross_validates():
    from cskd_fastai.metrics.calibration import _folds, fit_temperature_checked
    g = torch.Generator().manual_seed(1)
    n, c = 400, 5
    true = torch.randn(n, c, generator=g) * 1.5
    y = torch.multinomial(true.softmax(1), 1, generator=g).squeeze(1)   # labels drawn from softmax(true)
    fit = fit_temperature_checked(3.0 * true, y)                        # over-confident by a factor of 3
    assert fit.trusted and fit.T == fit.fitted and 2.3 < fit.T < 3.9
    # the held-out NLL at T = 1 is just the NLL over the folds, which partition the set
    assert fit.cv_nll_one == pytest.approx(float(F.cross_entropy((3.0 * true).double(), y)), rel=1e-9)
    held = np.concatenate(_folds(n, 5))
    assert sorted(held.tolist()) == list(range(n))
    assert fit.cv_nll_fitted < fit.cv_nll_one


def test_reliability_diagram_states_counts_binning_and_keeps_the_legend_off_the_bars():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(500, 5, generator=g) * 3, torch.randint(0, 5, (500,), generator=g)
    ax = reliability_diagram(z, y, n_bins=10)
    s = bin_stats(z, y, n_bins=10)
    counts = sorted(int(t.get_text()) for t in ax.texts)
    assert counts == sorted(int(c) for c in s["count"] if c > 0) and sum(counts) == 500
    legend = ax.get_legend()
    assert any("10 equal-width bins" in t.get_text() for t in legend.get_texts())
    ax.figure.canvas.draw()
    box, axbox = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axbox.x1 - 1                       # the legend sits right of the axes, not over the bars
