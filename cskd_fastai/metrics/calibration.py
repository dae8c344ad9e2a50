"""Post-hoc temperature scaling and reliability plots (Guo, Pleiss, Sun, Weinberger, ICML 2017).

`fit_temperature` learns one scalar T > 0 on held-out logits; `apply_temperature` turns logits into calibrated
probabilities. `bin_stats` feeds both plots with exactly the binning of `metrics.calibration_error`
(``[k/n, (k+1)/n)``, last bin closed so a confidence of 1.0 counts in it), so the ECE printed on a reliability
diagram is the ECE reported by the metrics. Plots draw on a given `Axes` or on a new pyplot-free `Figure`, which
works with any (including the non-interactive Agg) backend and never calls `plt.show`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import (check_logits_targets, check_n_bins, calibration_bins,
                                 calibration_error_from_confidences, top_label_confidences)

__all__ = ["fit_temperature", "TemperatureFit", "fit_temperature_checked", "MIN_ERRORS", "apply_temperature", "bin_stats", "reliability_diagram", "confidence_histogram"]

# Perfectly separable logits have their NLL optimum at T -> 0 (and constant ones are flat in T); bounding log T
# keeps LBFGS finite there while leaving any realistic temperature (~0.5-5 for modern nets) untouched.
_LOG_T_BOUND = math.log(1e3)


def fit_temperature(logits: Tensor, targets: Tensor, max_iter: int = 100) -> float:
    "Temperature T > 0 minimising the NLL of `softmax(logits / T)`, fitted by LBFGS over log T (T in [1e-3, 1e3])."
    check_logits_targets(logits, targets)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"expected max_iter to be a positive int, got {max_iter!r}")
    # float64 on CPU: one scalar parameter, so precision and determinism matter more than speed
    z = logits.detach().to("cpu", torch.float64)
    y = targets.detach().to("cpu", torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # start at T = 1 (the uncalibrated model)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        # optimising log T keeps T positive without a constraint; the clamp caps the separable-data runaway
        loss = F.cross_entropy(z / log_t.clamp(-_LOG_T_BOUND, _LOG_T_BOUND).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().clamp(-_LOG_T_BOUND, _LOG_T_BOUND).exp())
    if not math.isfinite(t):
        raise ValueError("temperature fit diverged; are the logits finite?")
    return t


# A temperature is only as good as the validation errors it was fitted on: with none the NLL optimum is T -> 0, with
# one or two it is a handful of samples' say (the quickstart CE run: 1 error in 189 gives T = 0.06, which doubles
# the test NLL and shows any photo at "100%"). Below this many errors the fit is not used (docs/calibration.md).
MIN_ERRORS = 10


@dataclass(frozen=True)
class TemperatureFit:
    """The temperature to apply (`T`), the NLL fit it came from (`fitted`), and whether the validation data
    supports it (`trusted`; when not, `T` is 1 and `reason` says why)."""
    T: float
    fitted: float
    trusted: bool
    reason: str
    n: int
    n_errors: int
    cv_nll_fitted: float = float("nan")
    cv_nll_one: float = float("nan")


def _folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def fit_temperature_checked(logits: Tensor, targets: Tensor, min_errors: int = MIN_ERRORS, k: int = 5) -> TemperatureFit:
    """`fit_temperature` on validation logits, applied only where the data supports it.

    Trusted when (1) there are at least `min_errors` misclassified validation samples and (2) a `k`-fold
    cross-validation agrees: T fitted on k-1 folds lowers the held-out fold's NLL against T = 1, summed over the
    folds. Otherwise T = 1 (the model as trained) and `reason` says which test failed."""
    check_logits_targets(logits, targets)
    z, y = logits.detach().cpu().double(), targets.detach().cpu().long()
    n, n_err = int(y.numel()), int((z.argmax(-1) != y).sum())
    fitted = fit_temperature(z, y)
    if n_err < min_errors:
        return TemperatureFit(1.0, fitted, False, f"only {n_err} of {n} validation images are misclassified (fewer "
                              f"than {min_errors}): too few to fit a temperature on", n, n_err)
    cv_fit = cv_one = 0.0
    for held in _folds(n, k):
        keep = np.setdiff1d(np.arange(n), held)
        t = fit_temperature(z[keep], y[keep])
        cv_fit += float(F.cross_entropy(z[held] / t, y[held], reduction="sum"))
        cv_one += float(F.cross_entropy(z[held], y[held], reduction="sum"))
    cv_fit, cv_one = cv_fit / n, cv_one / n
    if not cv_fit < cv_one:
        return TemperatureFit(1.0, fitted, False, f"a {k}-fold cross-validation on the validation split finds no "
                              f"gain (held-out NLL {cv_fit:.4f} vs {cv_one:.4f} at T = 1)", n, n_err, cv_fit, cv_one)
    return TemperatureFit(fitted, fitted, True, f"fitted on {n} validation images ({n_err} errors); held-out NLL "
                          f"{cv_fit:.4f} vs {cv_one:.4f} at T = 1", n, n_err, cv_fit, cv_one)


def apply_temperature(logits: Tensor, T: float) -> Tensor:
    "Calibrated probabilities `softmax(logits / T)` (at least float32; float64 logits stay float64)."
    T = float(T)
    if not (math.isfinite(T) and T > 0):
        raise ValueError(f"expected a finite temperature T > 0, got {T}")
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim < 1:
        raise ValueError("expected floating-point logits with classes on the last dim")
    z = logits if logits.dtype == torch.float64 else logits.float()
    return (z / T).softmax(dim=-1)


def bin_stats(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict:
    "Per-bin `count`, `accuracy`, `confidence` (NaN when empty), the bin `edges` and the `ece`, as NumPy/floats."
    check_n_bins(n_bins)
    conf, correct = top_label_confidences(logits, targets)
    count, acc, mean_conf = calibration_bins(conf, correct, n_bins)
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1),  # nominal edges; the last bin includes 1.0
            "count": count.cpu().numpy().astype(np.int64),
            "accuracy": acc.cpu().numpy(),
            "confidence": mean_conf.cpu().numpy(),
            "ece": float(calibration_error_from_confidences(conf, correct, n_bins)),
            "mean_accuracy": float(correct.mean()),
            "mean_confidence": float(conf.mean())}


def _new_axes(ax):
    if ax is not None: return ax
    from matplotlib.figure import Figure  # pyplot-free: no global figure registry, no GUI backend needed
    return Figure(figsize=(4.5, 4.5), layout="constrained").add_subplot()


def reliability_diagram(logits: Tensor, targets: Tensor, n_bins: int = 15, ax=None, title: str | None = None):
    "Draw accuracy per confidence bin vs the diagonal, shading the calibration gap; returns the `Axes` (`.figure` to save)."
    s = bin_stats(logits, targets, n_bins)
    ax = _new_axes(ax)
    left, width = s["edges"][:-1], 1.0 / n_bins
    full = s["count"] > 0  # empty bins have no accuracy: draw nothing rather than a misleading zero bar
    acc, conf = s["accuracy"][full], s["confidence"][full]
    ax.bar(left[full], acc, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.6,
           label="Accuracy")
    # the gap spans accuracy -> mean confidence of the bin: above the bar when over-confident, inside when under
    ax.bar(left[full], conf - acc, bottom=acc, width=width, align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", linewidth=0.6, label="Gap")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="Perfect calibration")
    ax.plot([], [], " ", label=f"ECE = {100 * s['ece']:.2f}%\n({n_bins} equal-width bins)")  # text-only entry
    # how many samples each bar stands for: a bar of 3 images is not a bar of 3,000
    for x, n, a, c in zip(left[full], s["count"][full], acc, conf):
        ax.text(x + width / 2, min(max(a, c) + 0.015, 0.95), str(int(n)), ha="center", va="bottom", fontsize=6,
                rotation=90 if n >= 100 else 0)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Confidence", ylabel="Accuracy", aspect="equal")
    # the legend sits outside the axes, never over the bars
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="small")
    if title is not None: ax.set_title(title)
    return ax


def confidence_histogram(logits: Tensor, targets: Tensor, n_bins: int = 15, ax=None):
    "Draw the fraction of samples per confidence bin with mean accuracy/confidence lines; returns the `Axes`."
    s = bin_stats(logits, targets, n_bins)
    ax = _new_axes(ax)
    ax.bar(s["edges"][:-1], s["count"] / s["count"].sum(), width=1.0 / n_bins, align="edge", color="tab:blue",
           edgecolor="black", linewidth=0.6)
    # Guo et al.'s tell-tale of over-confidence: the mean-confidence line to the right of the accuracy line
    ax.axvline(s["mean_accuracy"], color="black", linestyle="--", label=f"Accuracy ({s['mean_accuracy']:.3f})")
    ax.axvline(s["mean_confidence"], color="tab:red", linestyle="--",
               label=f"Avg. confidence ({s['mean_confidence']:.3f})")
    ax.set(xlim=(0, 1), xlabel=f"Confidence ({n_bins} equal-width bins)", ylabel="Fraction of samples")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="small")
    return ax
