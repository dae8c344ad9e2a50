"""Calibrated predictions from Python: open a finished run and predict at the temperature its validation split
supports, the numbers `cskd-fastai predict` prints and the demo shows.

    >>> run = open_run("runs/cub100_finetune/ce/seed0")
    >>> run.predict("bird.jpg")                       # {'T': 0.9, 'top': [('Cardinal', 0.81), ...]}
    >>> run.predict(["a.jpg", "b.jpg"], k=3, coverage=0.9)   # each with its conformal prediction set

The model is rebuilt from the run's recipe and `model.safetensors` (`rebuild.py`): nothing from the run directory is
unpickled. `fastai.learner.load_learner(run/export.pkl).predict(img)` answers at T = 1 instead (and unpickles).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["RunModel", "open_run"]


class RunModel:
    "A finished run, ready to predict: its classes, the temperature applied (`T`) and why (`temperature_note`)."
    def __init__(self, path):
        from .serving import load_model
        self.entry = load_model(path)

    @property
    def classes(self) -> list[str]: return self.entry.classes
    @property
    def T(self) -> float: return self.entry.temperature

    @property
    def temperature_note(self) -> str:
        f = self.entry.fit
        if f is None: return "T = 1 (no validation logits)"
        return f"T = {f.T:.3g} fitted on the validation split" if f.trusted else f"T = 1: {f.reason}"

    def predict(self, images, k: int = 5, coverage: float | None = None, score: str = "lac", classwise: bool = False):
        """Top-`k` [(class, probability at T)] of one image (a dict) or of a list of images (a list of dicts), with
        `set` ([(class, probability)]) at `coverage` when asked (calibrated on the validation split)."""
        from .metrics.calibration import apply_temperature
        from .serving import predict_logits, top_k
        one = not isinstance(images, (list, tuple))
        logits = predict_logits(self.entry, [images] if one else list(images))
        rows = [dict(T=self.T, top=list(top_k(p, self.classes, k).items())) for p in apply_temperature(logits, self.T)]
        if coverage is not None:
            from .sets import SetPredictor
            for row, s in zip(rows, SetPredictor(self.entry, coverage, score, classwise).sets(logits)): row["set"] = s
        return rows[0] if one else rows


def open_run(path) -> RunModel:
    "A finished run directory as a `RunModel` (one `RunDirError` line if it is missing, unfinished or changed)."
    return RunModel(Path(path))
