"""Conformal prediction sets of a finished run (`metrics.conformal`): calibrated on the run's validation split,
never on test, at the temperature the run applies (fitted on validation where the validation data supports it).

* `run_conformal` -- coverage and set size on test at 90% and 95% for `eval` and `compare` (one calibration draw:
  the validation split as it is);
* `SetPredictor` / `conformal_sets` -- the set of each new image, for `predict --coverage`, the demo and Python.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .metrics.calibration import apply_temperature, fit_temperature_checked
from .metrics.conformal import prediction_sets, set_metrics

__all__ = ["GUARANTEE", "run_conformal", "SetPredictor", "conformal_sets"]

GUARANTEE = ("The true class is in the set for at least {pct} of images like the calibration (validation) images, on "
             "average; this does not hold for images unlike them (other classes, class balance or cameras).")
REPORT_SCORES = ("lac", "aps_randomized", "raps_randomized")


def _probs(logits, T: float) -> np.ndarray: return apply_temperature(torch.as_tensor(logits).float(), T).numpy()


def run_conformal(valid: tuple, test: tuple, T: float, coverages: Sequence[float] = (0.9, 0.95),
                  scores: Sequence[str] = REPORT_SCORES) -> dict:
    """{score: {coverage: metrics}} and the class-conditional LAC (`lac_classwise`, with its worst class), calibrated
    on `valid` (logits, labels) and measured on `test`, at temperature `T`. A calibration split too small for a
    coverage gives that coverage an `error` entry instead of numbers."""
    vp, tp = _probs(valid[0], T), _probs(test[0], T)
    vy, ty = np.asarray(valid[1]), np.asarray(test[1])
    out = {"T": float(T), "n_calibration": int(len(vy)), "n_test": int(len(ty)),
           "meaning": GUARANTEE.format(pct="the coverage")}
    for name, score, classwise in [(s, s, False) for s in scores] + [("lac_classwise", "lac", True)]:
        out[name] = {}
        for c in coverages:
            try:
                cs = prediction_sets(vp, vy, tp, c, score, classwise)
                out[name][f"{c:g}"] = dict(set_metrics(cs.sets, ty), **({"note": cs.note} if cs.note else {}))
            except ValueError as e: out[name][f"{c:g}"] = {"error": str(e)}
    return out


class SetPredictor:
    """The conformal set of any new image of a loaded run (`serving.ModelEntry`) at `coverage`, calibrated on the
    run's stored validation logits at the run's temperature (or `T`). Each `sets` call recalibrates on those same
    logits with a fixed random state (`prediction_sets` conformalises and predicts in one call): the same sets for
    the same images every call, at the cost of one calibration (milliseconds for a validation split)."""
    def __init__(self, entry, coverage: float = 0.9, score: str = "lac", classwise: bool = False, T: float | None = None):
        if entry.valid is None:
            raise ValueError(f"{entry.label}: no validation logits to calibrate prediction sets on")
        self.entry, self.coverage, self.score, self.classwise = entry, coverage, score, classwise
        self.T = entry.temperature if T is None else float(T)
        self._cal = (_probs(entry.valid[0], self.T), np.asarray(entry.valid[1]))
        self.note = prediction_sets(*self._cal, self._cal[0][:1], coverage, score, classwise).note   # checks inputs

    def sets(self, logits) -> list[list[tuple[str, float]]]:
        "For logits (N, C): each image's set as [(class, probability at T)], most probable first."
        p = _probs(torch.as_tensor(logits).reshape(-1, len(self.entry.classes)), self.T)
        member = prediction_sets(*self._cal, p, self.coverage, self.score, self.classwise).sets
        out = []
        for row, m in zip(p, member):
            idx = np.flatnonzero(m)
            out.append([(self.entry.classes[i], float(row[i])) for i in idx[np.argsort(-row[idx])]])
        return out

    @property
    def guarantee(self) -> str: return GUARANTEE.format(pct=f"{100 * self.coverage:g}%")


def conformal_sets(learn_or_run, images, coverage: float = 0.9, score: str = "lac", classwise: bool = False):
    """Prediction sets for `images` (paths, arrays or PIL images) at `coverage`: [[(class, prob), ...], ...].

    `learn_or_run` is a finished run directory (calibrated on its stored validation logits, at its temperature) or
    a fastai `Learner` (calibrated on its validation loader, at the temperature that split supports)."""
    from .serving import ModelEntry, load_model, predict_logits
    if isinstance(learn_or_run, ModelEntry): entry = learn_or_run
    elif hasattr(learn_or_run, "dls"):
        entry = ModelEntry.from_learner(learn_or_run)
        with learn_or_run.no_bar(), learn_or_run.no_logging():
            from fastcore.basics import noop
            z, y = learn_or_run.get_preds(ds_idx=1, act=noop)
        fit = fit_temperature_checked(z.float(), y.long())
        entry.valid, entry.temperature, entry.fit = (z.float(), y.long()), fit.T, fit
    else: entry = load_model(learn_or_run)
    sp = SetPredictor(entry, coverage, score, classwise)
    return sp.sets(predict_logits(entry, list(images)))
