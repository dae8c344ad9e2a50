"""Functional classification metrics on raw logits: top-k error, ECE, NLL and Brier score.

Everything here is pure (no state) and works on any device. Inputs are raw logits `(N, C)` of any float
dtype and integer targets `(N,)`; the computation is upcast to float64 (float32 on MPS, which has no
float64) so that half-precision logits from mixed-precision training give the same numbers as fp32 ones.

Binning convention of the expected calibration error (ECE)
----------------------------------------------------------
Equal-width bins ``B_k = [k/n, (k+1)/n)`` for ``k < n-1`` and a closed last bin ``B_{n-1} = [(n-1)/n, 1]``:
left-closed like ``torch.bucketize(..., right=True)`` that torchmetrics uses, but a confidence of exactly 1.0
(a saturated softmax, common for over-confident networks) belongs to the last bin. torchmetrics 1.9 bins with
``bucketize(conf, linspace(0, 1, n+1), right=True) - 1``, which sends ``conf == 1.0`` to an extra
``(n+1)``-th bin of its own; its |acc - conf| is then never averaged with the rest of the top bin, so the ECE
is not the documented n-bin estimate. Here the bin boundaries' last edge is nudged to the next float above 1.0
(`torch.nextafter`), so every confidence in ``[0, 1]`` falls into one of the n real bins, and the ECE is the
weighted mean of |accuracy - confidence| over those bins (`calibration_bins`), computed here rather than with
torchmetrics' private `_ce_compute`; tests/test_metrics.py checks it against torchmetrics' public
`multiclass_calibration_error` wherever no confidence is exactly 1.0 (where the two binnings agree).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_logits_targets", "check_n_bins", "calibration_bin_boundaries", "classwise_bins",
           "adaptive_calibration_error_from_confidences", "calibration_bins", "calibration_error", "adaptive_calibration_error",
           "classwise_calibration_error",
           "calibration_error_from_confidences", "top_label_confidences", "top_k_error", "nll",
           "brier_score", "classification_metrics"]


def check_logits_targets(logits: Tensor, targets: Tensor) -> None:
    "Raise a one-line `ValueError` unless `logits` is float `(N, C)` and `targets` integer `(N,)` in `[0, C)`."
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise ValueError(f"expected torch Tensors, got {type(logits).__name__} and {type(targets).__name__}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"expected logits of shape (N, C) with N, C >= 1, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"expected floating-point logits, got {logits.dtype}")
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"expected targets of shape ({logits.shape[0]},) to match logits "
                         f"{tuple(logits.shape)}, got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"expected integer class-index targets, got {targets.dtype}")
    # out-of-range labels would otherwise surface as an opaque gather/scatter index error (or a CUDA assert)
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= logits.shape[1]:
        raise ValueError(f"expected targets in [0, {logits.shape[1]}), got values in [{lo}, {hi}]")


def check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"expected n_bins to be a positive int, got {n_bins!r}")


def upcast(x: Tensor) -> Tensor:
    "float64 copy of `x`, float32 on MPS (no float64 there)."
    return x.float() if x.device.type == "mps" else x.double()


def top_label_confidences(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    "Per-sample top-label confidence (max softmax prob) and correctness (1.0/0.0) of the argmax prediction."
    check_logits_targets(logits, targets)
    logits = upcast(logits.detach())
    # the prediction is the argmax of the *logits* (first index on ties, like `top_k_error`), so rounding in
    # softmax can't create new ties; the confidence is the max prob, whichever index carries it
    pred = logits.argmax(dim=1)
    conf = logits.softmax(dim=1).amax(dim=1)
    return conf, (pred == targets.to(pred.device)).to(conf.dtype)


def calibration_bin_boundaries(n_bins: int, dtype: torch.dtype = torch.float64,
                               device: torch.device | str | None = None) -> Tensor:
    "The `n_bins + 1` edges `k/n`, the last one nudged just above 1.0 so that `conf == 1.0` lands in the last bin."
    check_n_bins(n_bins)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=dtype, device=device)
    edges[-1] = torch.nextafter(edges[-1], torch.tensor(2.0, dtype=dtype, device=device))
    return edges


def _check_confidences(confidences: Tensor, accuracies: Tensor) -> None:
    if confidences.ndim != 1 or confidences.shape != accuracies.shape or confidences.numel() == 0:
        raise ValueError(f"expected non-empty 1-D confidences and accuracies of equal shape, got "
                         f"{tuple(confidences.shape)} and {tuple(accuracies.shape)}")
    if not confidences.is_floating_point():
        raise ValueError(f"expected floating-point confidences, got {confidences.dtype}")
    # outside [0, 1] bucketize yields bin -1 or n+1: an index error deep inside scatter_add_ otherwise
    if not bool(((confidences >= 0) & (confidences <= 1)).all()):
        raise ValueError("expected confidences in [0, 1] (probabilities, not logits; NaN from non-finite logits?)")


def calibration_bins(confidences: Tensor, accuracies: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    "Per-bin `(count, mean accuracy, mean confidence)` with the module's binning; means are NaN in empty bins."
    _check_confidences(confidences, accuracies)
    edges = calibration_bin_boundaries(n_bins, confidences.dtype, confidences.device)
    # same call torchmetrics' `_binning_bucketize` makes, with the same edges, so bins agree with the ECE
    idx = torch.bucketize(confidences, edges, right=True) - 1
    count = torch.zeros(n_bins, dtype=confidences.dtype, device=confidences.device).index_add_(
        0, idx, torch.ones_like(confidences))
    acc_sum = torch.zeros_like(count).index_add_(0, idx, accuracies.to(confidences.dtype))
    conf_sum = torch.zeros_like(count).index_add_(0, idx, confidences)
    return count, acc_sum / count, conf_sum / count


def calibration_error_from_confidences(confidences: Tensor, accuracies: Tensor, n_bins: int = 15) -> Tensor:
    "Top-label ECE (L1, equal-width bins, `conf == 1.0` in the last bin) of per-sample confidences/correctness."
    count, acc, conf = calibration_bins(confidences, accuracies, n_bins)
    filled = count > 0
    return ((count[filled] / count.sum()) * (acc[filled] - conf[filled]).abs()).sum()


def calibration_error(logits: Tensor, targets: Tensor, n_bins: int = 15) -> Tensor:
    "Top-label expected calibration error of raw `logits`, with the last-bin fix described in the module doc."
    check_n_bins(n_bins)
    # we softmax ourselves: torchmetrics' `normalize_logits_if_needed` skips softmax when every value happens
    # to lie in [0, 1], silently treating such logits as probabilities
    conf, correct = top_label_confidences(logits, targets)
    return calibration_error_from_confidences(conf, correct, n_bins)


def adaptive_calibration_error_from_confidences(confidences: Tensor, accuracies: Tensor, n_bins: int = 15) -> Tensor:
    "Equal-mass ECE of per-sample top-label confidences and correctness (see `adaptive_calibration_error`)."
    _check_confidences(confidences, accuracies)
    order = torch.argsort(confidences, stable=True)
    conf, correct = confidences[order], accuracies[order].to(confidences.dtype)
    n = conf.numel()
    sizes = [n // n_bins + (1 if k < n % n_bins else 0) for k in range(n_bins)]
    total, start = conf.new_zeros(()), 0
    for size in sizes:
        if size:
            total = total + size * (correct[start:start + size].mean() - conf[start:start + size].mean()).abs()
        start += size
    return total / n


def adaptive_calibration_error(logits: Tensor, targets: Tensor, n_bins: int = 15) -> Tensor:
    """Top-label ECE with equal-mass bins (Nixon et al., "Measuring Calibration in Deep Learning", CVPR-W 2019):
    samples sorted by confidence and split into `n_bins` groups of equal size (the first `N mod n_bins` groups one
    larger, as `numpy.array_split`), then sum over groups of (size / N) * |accuracy - mean confidence|.
    Unlike equal-width bins, no bin is empty and the crowded top bin of a confident network is split up."""
    check_n_bins(n_bins)
    conf, correct = top_label_confidences(logits, targets)
    return adaptive_calibration_error_from_confidences(conf, correct, n_bins)


def classwise_bins(logits: Tensor, targets: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Per (class, bin) cell, flattened class-major (C * n_bins): sample count, count of y = class, and summed
    probability of the class, with this module's equal-width bins. Sums over batches stream exactly."""
    check_logits_targets(logits, targets)
    check_n_bins(n_bins)
    p = upcast(logits.detach()).softmax(dim=1)
    onehot = F.one_hot(targets.to(p.device).long(), p.shape[1]).to(p.dtype)
    edges = calibration_bin_boundaries(n_bins, p.dtype, p.device)
    idx = torch.bucketize(p, edges, right=True) - 1                      # (N, C) bin of each class probability
    cls = torch.arange(p.shape[1], device=p.device).expand_as(idx)
    flat = (cls * n_bins + idx).reshape(-1)                              # one (class, bin) cell per entry
    count = torch.zeros(p.shape[1] * n_bins, dtype=p.dtype, device=p.device).index_add_(0, flat, torch.ones_like(p).reshape(-1))
    hits = torch.zeros_like(count).index_add_(0, flat, onehot.reshape(-1))
    mass = torch.zeros_like(count).index_add_(0, flat, p.reshape(-1))
    return count, hits, mass


def classwise_calibration_error(logits: Tensor, targets: Tensor, n_bins: int = 15) -> Tensor:
    """Class-wise ECE (Kumar, Liang, Ma, "Verified Uncertainty Calibration", NeurIPS 2019; the static calibration
    error of Nixon et al. 2019): for every class k, the probability p_k of *every* sample is binned (equal-width,
    this module's bins) and |frequency of y = k - mean p_k| weighted by bin size / N; the mean over classes.
    It sees the whole predicted distribution, not only the top label."""
    count, hits, mass = classwise_bins(logits, targets, n_bins)
    # |sum(y) - sum(p)| per cell is |B| * |acc - conf|; / N per class, then the mean over classes
    return (hits - mass).abs().sum() / (logits.shape[0] * logits.shape[1])


def top_k_correct(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    "Per-sample bool: is the target among the top `k` classes (ties broken toward the lower class index)."
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"expected k to be a positive int, got {k!r}")
    targets = targets.to(logits.device).long()
    t = logits.gather(1, targets[:, None])
    idx = torch.arange(logits.shape[1], device=logits.device)
    # rank of the target in a descending stable sort: deterministic (unlike `topk` on ties) and, for k=1,
    # identical to `argmax`, so top1_err always equals 1 - the accuracy inside the ECE
    rank = (logits > t).sum(1) + ((logits == t) & (idx < targets[:, None])).sum(1)
    return rank < min(k, logits.shape[1])


def top_k_error(logits: Tensor, targets: Tensor, k: int = 1) -> Tensor:
    "Fraction of samples whose target is not among the `min(k, C)` highest logits."
    check_logits_targets(logits, targets)
    logits = upcast(logits.detach())
    return 1.0 - top_k_correct(logits, targets, k).to(logits.dtype).mean()


def nll_per_sample(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(upcast(logits.detach()), targets.to(logits.device).long(), reduction="none")


def brier_per_sample(logits: Tensor, targets: Tensor) -> Tensor:
    p = upcast(logits.detach()).softmax(dim=1)
    onehot = F.one_hot(targets.to(logits.device).long(), logits.shape[1]).to(p.dtype)
    return (p - onehot).pow(2).sum(dim=1)


def nll(logits: Tensor, targets: Tensor) -> Tensor:
    "Mean cross-entropy (negative log-likelihood) of the softmax of `logits`."
    check_logits_targets(logits, targets)
    return nll_per_sample(logits, targets).mean()


def brier_score(logits: Tensor, targets: Tensor) -> Tensor:
    "Multi-class Brier score: mean over samples of sum over classes of (p - onehot)^2 (range [0, 2])."
    check_logits_targets(logits, targets)
    return brier_per_sample(logits, targets).mean()


def classification_metrics(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, float]:
    """`top1_err`, `top5_err` (k = min(5, C)), `ece` (top-label, `n_bins` equal-width bins), `ece_adaptive`
    (top-label, `n_bins` equal-mass bins), `ece_classwise` (every class, `n_bins` equal-width bins), `nll` and
    `brier` of raw `logits` as Python floats."""
    check_logits_targets(logits, targets)
    check_n_bins(n_bins)
    return {"top1_err": float(top_k_error(logits, targets, 1)),
            "top5_err": float(top_k_error(logits, targets, 5)),
            "ece": float(calibration_error(logits, targets, n_bins)),
            "ece_adaptive": float(adaptive_calibration_error(logits, targets, n_bins)),
            "ece_classwise": float(classwise_calibration_error(logits, targets, n_bins)),
            "nll": float(nll(logits, targets)),
            "brier": float(brier_score(logits, targets))}
