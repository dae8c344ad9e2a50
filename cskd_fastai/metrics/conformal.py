"""Prediction sets with a coverage guarantee: split conformal prediction (Vovk et al. 2005; Angelopoulos & Bates,
"A Gentle Introduction to Conformal Prediction", 2021) over a trained model's probabilities, through MAPIE.

MAPIE (`SplitConformalClassifier`, prefit) rather than crepes: it has all the scores asked for (LAC, APS with and
without randomisation, RAPS) behind one API, takes a fitted model's probabilities as they are, and its quantile is
the finite-sample one (level ⌈(n+1)(1-α)⌉/n). The model here is a stand-in whose `predict_proba` returns the
probabilities it is given, so MAPIE never re-fits or calls the network.

Guarantee: with a calibration split of n images and coverage 1 - α, the true class is in the set for at least
1 - α of *new images exchangeable with the calibration ones* (on average over calibration draws). It says nothing
for images unlike the calibration split (another class balance, another camera): say so wherever a set is shown.

The class-conditional (Mondrian) form calibrates one threshold per class on that class's calibration images, so
each class is covered at 1 - α; a class with fewer calibration images than the coverage needs uses the marginal
threshold instead, and the result says which classes did (never a silent all-classes set).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

__all__ = ["SCORES", "ConformalError", "min_calibration", "prediction_sets", "set_metrics", "random_split_evaluation",
           "ConformalSets"]

# score name -> (MAPIE conformity score, include_last_label of the set's last class)
SCORES = {"lac": ("lac", None), "aps": ("aps", True), "aps_randomized": ("aps", "randomized"),
          "raps": ("raps", True), "raps_randomized": ("raps", "randomized")}


class ConformalError(ValueError):
    "Bad coverage, score or calibration data: one line naming the cause and the fix."


def _check(coverage: float, score: str) -> None:
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < coverage < 1:
        raise ConformalError(f"coverage must be a number strictly between 0 and 1 (e.g. 0.9), got {coverage!r}")
    if score not in SCORES: raise ConformalError(f"score must be one of {sorted(SCORES)}, got {score!r}")


def min_calibration(coverage: float) -> int:
    "The fewest calibration images for which the set at `coverage` is not every class: n >= 1/α - 1."
    return max(1, math.ceil(1 / (1 - coverage) - 1 - 1e-9))


class _Probabilities(ClassifierMixin, BaseEstimator):
    "A fitted 'classifier' whose probabilities are its input: MAPIE's prefit estimator for stored predictions."
    def __init__(self, n_classes: int = 2): self.n_classes = n_classes

    def fit(self, X=None, y=None):
        self.classes_ = np.arange(self.n_classes)
        return self

    def predict_proba(self, X): return np.asarray(X, dtype=float)
    def predict(self, X): return np.asarray(X).argmax(1)


def _sets(cal_p, cal_y, test_p, coverage, score, random_state) -> np.ndarray:
    from mapie.classification import SplitConformalClassifier
    name, last = SCORES[score]
    m = SplitConformalClassifier(_Probabilities(cal_p.shape[1]).fit(), confidence_level=coverage, conformity_score=name,
                                 prefit=True, random_state=random_state)
    try:
        with warnings.catch_warnings():   # MAPIE warns about small calibration sets; we check and say it ourselves
            warnings.simplefilter("ignore")
            m.conformalize(cal_p, cal_y)
            _, sets = m.predict_set(test_p, conformity_score_params=None if last is None else {"include_last_label": last})
    except ValueError as e:   # e.g. RAPS tunes its penalty on part of the calibration split and needs more images
        raise ConformalError(f"{score} at coverage {coverage:g} on {len(cal_y)} calibration images: "
                             f"{' '.join(str(e).split())} (MAPIE); use lac or aps, or calibrate on more images") from None
    return sets[:, :, 0].astype(bool)


@dataclass
class ConformalSets:
    "Boolean (N, C) membership of each class in each image's set, with what was used to build it."
    sets: np.ndarray
    coverage: float
    score: str
    classwise: bool
    n_calibration: int
    fallback_classes: list = field(default_factory=list)   # classes that used the marginal threshold (too few images)
    note: str = ""


def prediction_sets(cal_probs, cal_labels, test_probs, coverage: float = 0.9, score: str = "lac",
                    classwise: bool = False, random_state: int = 0) -> ConformalSets:
    """Conformal sets for `test_probs` (N, C) calibrated on `cal_probs`/`cal_labels` (never the test split).
    `classwise` gives the class-conditional (Mondrian) form. Too small a calibration split for `coverage` is one
    `ConformalError` line naming the largest coverage it supports."""
    _check(coverage, score)
    cal_p, cal_y, test_p = (np.asarray(a, dtype=float) for a in (cal_probs, cal_labels, test_probs))
    cal_y = cal_y.astype(int)
    if cal_p.ndim != 2 or test_p.ndim != 2 or cal_p.shape[1] != test_p.shape[1] or len(cal_p) != len(cal_y):
        raise ConformalError(f"calibration probabilities {cal_p.shape}, labels {cal_y.shape} and test probabilities "
                             f"{test_p.shape} do not fit together")
    n, need = len(cal_y), min_calibration(coverage)
    if n < need:
        top = 1 - 1 / (n + 1) if n else 0
        raise ConformalError(f"a calibration split of {n} images is too small for coverage {coverage:g} (it needs at "
                             f"least {need}; with {n} every set would hold every class); lower the coverage to at most "
                             f"{math.floor(top * 100) / 100:g} or calibrate on more images")
    sets = _sets(cal_p, cal_y, test_p, coverage, score, random_state)
    if not classwise: return ConformalSets(sets, coverage, score, False, n)
    out, fallback = sets.copy(), []
    for k in range(cal_p.shape[1]):
        mine = cal_y == k
        if mine.sum() < need: fallback.append(k); continue          # the marginal threshold stays in column k
        out[:, k] = _sets(cal_p[mine], cal_y[mine], test_p, coverage, score, random_state)[:, k]
    note = (f"{len(fallback)} of {cal_p.shape[1]} classes have fewer than {need} calibration images: they use the "
            f"marginal threshold (covered on average, not per class)") if fallback else ""
    return ConformalSets(out, coverage, score, True, n, fallback, note)


def set_metrics(sets: np.ndarray, labels) -> dict:
    "Empirical coverage, mean and median set size, and the worst class's coverage (classes present in `labels`)."
    y = np.asarray(labels).astype(int)
    hit = sets[np.arange(len(y)), y]
    size = sets.sum(1)
    per_class = [hit[y == k].mean() for k in np.unique(y)]
    return dict(coverage=float(hit.mean()), mean_size=float(size.mean()), median_size=float(np.median(size)),
                worst_class_coverage=float(min(per_class)), empty_sets=float((size == 0).mean()))


def random_split_evaluation(probs, labels, coverage: float = 0.9, score: str = "lac", classwise: bool = False,
                            n_draws: int = 100, cal_fraction: float = 0.5, seed: int = 0) -> dict:
    """The standard protocol for comparing methods (Angelopoulos & Bates 2021, §2.2): `n_draws` random splits of one
    labelled set (e.g. test) into calibration and evaluation halves; mean and std over draws of each `set_metrics`
    value. For the evidence, not for a deployed set (that one is calibrated on the validation split)."""
    p, y = np.asarray(probs, dtype=float), np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_draws):
        perm = rng.permutation(len(y)); k = int(round(cal_fraction * len(y)))
        cs = prediction_sets(p[perm[:k]], y[perm[:k]], p[perm[k:]], coverage, score, classwise)
        rows.append(set_metrics(cs.sets, y[perm[k:]]))
    return {key: (float(np.mean([r[key] for r in rows])), float(np.std([r[key] for r in rows])))
            for key in rows[0]}
