"""Streaming fastai metrics for CS-KD reports: top-k error, ECE, NLL and Brier score.

Each fastai `Metric` reads `learn.pred` (raw logits) and `learn.yb[0]` (targets) once per batch and keeps
running sums, so a validation pass never holds all predictions; the values equal `classification_metrics`
on the concatenated logits. ECE is the exception that needs per-sample state (bins are only known at the
end), and keeps one confidence and one correctness flag per sample in `TopLabelCalibrationError`, a
torchmetrics `Metric`. All objects are plain picklable Python, as `Learner.export` pickles its metrics.
"""
from __future__ import annotations

import torch
from fastai.learner import Metric
from fastai.torch_core import to_detach
from torch import Tensor
from torchmetrics import Metric as TMMetric
from torchmetrics.utilities import dim_zero_cat

from .functional import (brier_per_sample, check_logits_targets, check_n_bins, nll_per_sample,
                         top_k_correct, upcast, adaptive_calibration_error_from_confidences,
                         calibration_error_from_confidences, classwise_bins, top_label_confidences)

__all__ = ["TopLabelCalibrationError", "TopKError", "NLL", "Brier", "ECE", "AdaptiveECE", "ClasswiseECE", "AURC", "AUGRC",
           "cskd_metrics"]


class TopLabelCalibrationError(TMMetric):
    "Stateful torchmetrics top-label ECE of raw logits, with `calibration_error`'s binning (`conf == 1.0` in the last bin)."
    # Not a `MulticlassCalibrationError` subclass: that one needs `num_classes` up front, casts confidences to
    # float32 and skips softmax when all logits happen to lie in [0, 1]; only its binning needed fixing.
    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    confidences: list[Tensor]
    accuracies: list[Tensor]

    def __init__(self, n_bins: int = 15, **kwargs):
        super().__init__(**kwargs)
        check_n_bins(n_bins)
        self.n_bins = n_bins
        self.add_state("confidences", [], dist_reduce_fx="cat")
        self.add_state("accuracies", [], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        "Add a batch of raw logits `(N, C)` and integer targets `(N,)`."
        conf, correct = top_label_confidences(preds, target)
        self.confidences.append(conf)
        self.accuracies.append(correct)

    def compute(self) -> Tensor:
        "ECE over every sample seen since the last `reset`."
        return calibration_error_from_confidences(dim_zero_cat(self.confidences), dim_zero_cat(self.accuracies),
                                                  self.n_bins)


def _batch(learn) -> tuple[Tensor, Tensor]:
    "Detached logits and targets of the current batch (gathered across processes under DDP, as `AccumMetric` does)."
    detach = getattr(learn, "to_detach", to_detach)  # a stand-in `learn` (tests, custom loops) may not have it
    pred, targ = detach(learn.pred), detach(learn.yb[0])
    check_logits_targets(pred, targ)
    return pred, targ


class _StreamingMean(Metric):
    "Mean of a per-sample quantity kept as a running float64 sum and count (`None` before any batch)."
    def __init__(self, name: str): self._name = name; self.reset()
    def reset(self) -> None: self.total, self.count = 0.0, 0
    def per_sample(self, pred: Tensor, targ: Tensor) -> Tensor: raise NotImplementedError

    def accumulate(self, learn) -> None:
        pred, targ = _batch(learn)
        # a Python float sum is float64, so long validation sets don't lose precision as a float32 sum would
        self.total += float(self.per_sample(pred, targ).sum())
        self.count += targ.shape[0]

    @property
    def value(self) -> float | None: return self.total / self.count if self.count else None
    @property
    def name(self) -> str: return self._name
    def __repr__(self) -> str: return f"{type(self).__name__}(name={self._name!r})"


class TopKError(_StreamingMean):
    "Streaming top-k error in [0, 1] (`top{k}_err`); `k` is clipped to the number of classes."
    def __init__(self, k: int = 1):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"expected k to be a positive int, got {k!r}")
        self.k = k
        super().__init__(f"top{k}_err")

    def per_sample(self, pred: Tensor, targ: Tensor) -> Tensor:
        return (~top_k_correct(upcast(pred), targ, self.k)).double()


class NLL(_StreamingMean):
    "Streaming mean negative log-likelihood (cross-entropy) of the logits (`nll`)."
    def __init__(self): super().__init__("nll")
    def per_sample(self, pred: Tensor, targ: Tensor) -> Tensor: return nll_per_sample(pred, targ)


class Brier(_StreamingMean):
    "Streaming multi-class Brier score, sum over classes of (p - onehot)^2 averaged over samples (`brier`)."
    def __init__(self): super().__init__("brier")
    def per_sample(self, pred: Tensor, targ: Tensor) -> Tensor: return brier_per_sample(pred, targ)


class ECE(Metric):
    "Top-label expected calibration error with `n_bins` equal-width bins (`ece`), wrapping `TopLabelCalibrationError`."
    def __init__(self, n_bins: int = 15):
        check_n_bins(n_bins)
        self.n_bins = n_bins
        # fastai's `to_detach` already gathered every process's batch; a second sync in compute would double count
        self.metric = TopLabelCalibrationError(n_bins, sync_on_compute=False)
        self.reset()

    def reset(self) -> None:
        self.metric.reset()
        self.count = 0

    def accumulate(self, learn) -> None:
        pred, targ = _batch(learn)
        self.metric.update(pred, targ)
        self.count += targ.shape[0]

    @property
    def value(self) -> float | None: return float(self.metric.compute()) if self.count else None
    @property
    def name(self) -> str: return "ece"
    def __repr__(self) -> str: return f"ECE(n_bins={self.n_bins})"


class AdaptiveECE(ECE):
    "Top-label ECE with `n_bins` equal-mass bins (`ece_adaptive`); keeps one confidence per sample, as `ECE`."
    @property
    def value(self) -> float | None:
        if not self.count: return None
        m = self.metric
        return float(adaptive_calibration_error_from_confidences(dim_zero_cat(m.confidences), dim_zero_cat(m.accuracies),
                                                                 self.n_bins))
    @property
    def name(self) -> str: return "ece_adaptive"
    def __repr__(self) -> str: return f"AdaptiveECE(n_bins={self.n_bins})"


class ClasswiseECE(Metric):
    "Class-wise ECE (`ece_classwise`) from per-(class, bin) sums that stream exactly: no per-sample state."
    def __init__(self, n_bins: int = 15): check_n_bins(n_bins); self.n_bins = n_bins; self.reset()
    def reset(self) -> None: self.sums, self.n, self.c = None, 0, 0

    def accumulate(self, learn) -> None:
        pred, targ = _batch(learn)
        cells = torch.stack(classwise_bins(pred, targ, self.n_bins))
        self.sums = cells if self.sums is None else self.sums + cells
        self.n, self.c = self.n + targ.shape[0], pred.shape[1]

    @property
    def value(self) -> float | None:
        if not self.n: return None
        count, hits, mass = self.sums
        return float((hits - mass).abs().sum() / (self.n * self.c))
    @property
    def name(self) -> str: return "ece_classwise"
    def __repr__(self) -> str: return f"ClasswiseECE(n_bins={self.n_bins})"


class AURC(Metric):
    """Area under the risk-coverage curve of max-softmax confidence (`aurc`, `selective.aurc`): how much error is left
    as the least confident predictions are dropped. Keeps one confidence and one correctness flag per sample."""
    metric_name = "aurc"
    def __init__(self): self.reset()
    def reset(self) -> None: self.conf, self.ok = [], []

    def accumulate(self, learn) -> None:
        conf, ok = top_label_confidences(*_batch(learn))
        self.conf.append(conf.cpu()); self.ok.append(ok.cpu())

    def area(self, conf, ok) -> float:
        from .selective import aurc
        return aurc(conf, ok)

    @property
    def value(self) -> float | None:
        return self.area(torch.cat(self.conf).numpy(), torch.cat(self.ok).numpy()) if self.conf else None
    @property
    def name(self) -> str: return self.metric_name
    def __repr__(self) -> str: return f"{type(self).__name__}()"


class AUGRC(AURC):
    "Area under the generalised risk-coverage curve (`augrc`, `selective.augrc`; Traub et al., NeurIPS 2024)."
    metric_name = "augrc"
    def area(self, conf, ok) -> float:
        from .selective import augrc
        return augrc(conf, ok)


def cskd_metrics(n_bins: int = 15) -> list:
    "Fresh `[top1_err, top5_err, ece, ece_adaptive, ece_classwise, nll, brier]` metrics for a CS-KD `Learner`."
    return [TopKError(1), TopKError(5), ECE(n_bins), AdaptiveECE(n_bins), ClasswiseECE(n_bins), NLL(), Brier()]
