"""Out-of-distribution detection from logits (issue #39, part 2): is an image of none of the model's classes?

Scores, higher = more like the training distribution, each at a temperature T (logits / T):
* `msp`: the maximum softmax probability (Hendrycks & Gimpel, ICLR 2017);
* `max_logit`: the largest logit (Hendrycks et al., "Scaling Out-of-Distribution Detection", ICML 2022), times T so
  that it is the same ranking at any T;
* `energy`: T·logsumexp(logits / T), the negative free energy (Liu, Wang, Owens, Li, NeurIPS 2020);
* `entropy`: minus the entropy of the softmax.
Metrics on a mixture of in-distribution (positive) and OOD images, torch-uncertainty's set: AUROC, AUPR with the
in-distribution images as positives (AUPR-in) and with the OOD ones as positives (AUPR-out, the scores negated), and
the false-positive rate at 95% true-positive rate (FPR95: the share of OOD images scored at least as high as the
threshold that keeps 95% of in-distribution images). AUROC and AUPR come from scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["SCORES", "ood_score", "threshold_at_tpr", "fpr_at_tpr", "ood_metrics", "FLAG_MEANING", "FLAG_CAVEAT",
           "familiarity_flag", "flagged"]

SCORES = ("msp", "max_logit", "energy", "entropy")
# The rule `predict` and the demo flag images by: max softmax at the run's temperature, below what 95% of its
# validation images get (so 1 in 20 in-distribution images is flagged by construction)
FLAG_SCORE, FLAG_TPR = "msp", 0.95
# What the flag does and does not catch, said once for `predict`'s line and the demo's
FLAG_CAVEAT = ("often an image of none of its classes, but 1 in 20 ordinary images is flagged too, an image the model "
               "is confidently wrong about is not, and most images of unseen classes that resemble its own (e.g. other "
               "bird species) pass unflagged")
FLAG_MEANING = f"unfamiliar = confidence below what 95% of this model's validation images get: {FLAG_CAVEAT}"


def ood_score(logits, score: str = "msp", T: float = 1.0) -> np.ndarray:
    "Per-image familiarity score (higher = more in-distribution) of `logits` [N, C] at temperature `T`."
    if score not in SCORES: raise ValueError(f"unknown OOD score {score!r}; expected one of {', '.join(SCORES)}")
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise ValueError(f"temperature must be a positive number, got {T!r}")
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / T
    if score == "msp": s = z.softmax(1).amax(1)
    elif score == "max_logit": s = z.amax(1) * T
    elif score == "energy": s = T * torch.logsumexp(z, 1)
    else: s = (z.softmax(1) * z.log_softmax(1)).sum(1)            # minus the entropy
    return s.numpy()


def _check(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    if x.size == 0 or not np.isfinite(x).all(): raise ValueError(f"{what} scores must be finite and non-empty")
    return x


def threshold_at_tpr(in_scores, tpr: float = 0.95) -> float:
    """The largest threshold t with at least a `tpr` share of `in_scores` ≥ t: images scoring below it are flagged,
    and at most 1 - tpr of in-distribution images are (ties at t are all kept)."""
    s = np.sort(_check(in_scores, "in-distribution"))[::-1]
    if not 0 < tpr <= 1: raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    return float(s[math.ceil(tpr * len(s) - 1e-9) - 1])


def fpr_at_tpr(in_scores, out_scores, tpr: float = 0.95) -> float:
    "Share of OOD images scored at or above `threshold_at_tpr(in_scores, tpr)`: the OOD images not flagged."
    return float(np.mean(_check(out_scores, "OOD") >= threshold_at_tpr(in_scores, tpr)))


def ood_metrics(in_scores, out_scores) -> dict:
    "AUROC, AUPR-in, AUPR-out and FPR95 of separating `in_scores` (positives) from `out_scores`."
    from sklearn.metrics import average_precision_score, roc_auc_score
    a, b = _check(in_scores, "in-distribution"), _check(out_scores, "OOD")
    y = np.r_[np.ones(len(a)), np.zeros(len(b))]
    s = np.r_[a, b]
    return dict(auroc=float(roc_auc_score(y, s)), aupr_in=float(average_precision_score(y, s)),
                aupr_out=float(average_precision_score(1 - y, -s)), fpr95=fpr_at_tpr(a, b, 0.95),
                n_in=len(a), n_out=len(b))


def familiarity_flag(valid_logits, T: float) -> dict:
    "The run's flag rule, fixed on its validation logits: {'score', 'T', 'tpr', 'threshold'} (stored in metrics.json)."
    thr = threshold_at_tpr(ood_score(valid_logits, FLAG_SCORE, T), FLAG_TPR)
    return dict(score=FLAG_SCORE, T=float(T), tpr=FLAG_TPR, threshold=thr)


def flagged(logits, flag: dict) -> np.ndarray:
    "Which rows of `logits` ([N, C], or one [C] row) fall below the flag's threshold."
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    return ood_score(z, flag["score"], flag["T"]) < flag["threshold"]
