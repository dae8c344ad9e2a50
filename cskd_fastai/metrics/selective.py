"""Selective prediction: how much error is left when the least confident predictions are dropped (issue #39, part 1).

The risk-coverage curve ranks images by confidence (max softmax, at T = 1 or a fitted T) and, for each coverage c,
takes the error rate among the c·N most confident ones. Ties in confidence enter together (a threshold cannot split
them), so the curve is evaluated at the distinct confidences only.

* AURC: area under the risk-coverage curve (Geifman, Uziel, El-Yaniv, ICLR 2019);
* E-AURC: AURC minus that of a perfect ranking of the same predictions (all errors last);
* AUGRC: area under the *generalised* risk-coverage curve, risk = errors accepted / all images (Traub et al.,
  "Overcoming Common Flaws in the Evaluation of Selective Classification Systems", NeurIPS 2024);
* risk at a given coverage, and the largest coverage whose risk stays at or below a given risk.
Functional core on (confidences, correct) in numpy, or on logits; `fastai_metrics.AURC`/`AUGRC` stream it."""
from __future__ import annotations

import numpy as np
import torch

from .functional import top_label_confidences    # the one softmax-confidence rule of every metric here

__all__ = ["risk_coverage_curve", "aurc", "e_aurc", "augrc", "risk_at_coverage", "coverage_at_risk",
           "selective_metrics"]


def _check(conf, correct) -> tuple[np.ndarray, np.ndarray]:
    c, ok = np.asarray(conf, dtype=float).ravel(), np.asarray(correct).astype(bool).ravel()
    if c.size == 0 or c.shape != ok.shape: raise ValueError(f"expected equal, non-empty confidences and correctness, "
                                                            f"got {c.shape} and {ok.shape}")
    if not np.isfinite(c).all(): raise ValueError("confidences must be finite")
    return c, ok


def risk_coverage_curve(conf, correct) -> tuple[np.ndarray, np.ndarray]:
    "(coverage, risk) at each distinct confidence, most confident first; ties accepted together."
    c, ok = _check(conf, correct)
    order = np.argsort(-c, kind="stable")
    c, err = c[order], (~ok[order]).astype(float)
    last = np.r_[np.flatnonzero(np.diff(c) != 0), len(c) - 1]   # the last index of each run of equal confidences
    n_acc = last + 1.0
    return n_acc / len(c), np.cumsum(err)[last] / n_acc


def _area(cov: np.ndarray, y: np.ndarray) -> float:
    "Step integral: each threshold's value over the coverage it adds (the discrete AURC when there are no ties)."
    return float(np.sum(y * np.diff(np.r_[0.0, cov])))


def aurc(conf, correct) -> float:
    cov, risk = risk_coverage_curve(conf, correct)
    return _area(cov, risk)


def augrc(conf, correct) -> float:
    "Area under the generalised risk (errors accepted / N) over coverage."
    cov, risk = risk_coverage_curve(conf, correct)
    return _area(cov, risk * cov)


def e_aurc(conf, correct) -> float:
    "AURC minus the AURC of the same predictions perfectly ranked (every correct one before every error)."
    c, ok = _check(conf, correct)
    k = np.arange(1, len(ok) + 1)
    return aurc(conf, correct) - float(np.mean(np.maximum(k - int(ok.sum()), 0) / k))


def risk_at_coverage(conf, correct, coverage: float) -> float:
    "Error rate among the `coverage` fraction most confident images (the threshold's tie group included)."
    cov, risk = risk_coverage_curve(conf, correct)
    return float(risk[np.searchsorted(cov, coverage - 1e-12)])


def coverage_at_risk(conf, correct, risk: float) -> float:
    "The largest coverage whose risk is at most `risk` (0 when even the most confident group is riskier)."
    cov, r = risk_coverage_curve(conf, correct)
    ok = r <= risk + 1e-12
    return float(cov[ok].max()) if ok.any() else 0.0


def selective_metrics(logits, labels, T: float = 1.0) -> dict:
    "AURC, E-AURC, AUGRC, risk at 80/90/95% coverage and coverage at 5% risk, of max-softmax confidence at `T`."
    z, y = torch.as_tensor(np.asarray(logits, dtype=np.float64)), torch.as_tensor(np.asarray(labels)).long()
    conf, ok = (t.numpy() for t in top_label_confidences(z / T, y))
    return dict(aurc=aurc(conf, ok), e_aurc=e_aurc(conf, ok), augrc=augrc(conf, ok),
                risk_at_80=risk_at_coverage(conf, ok, 0.8), risk_at_90=risk_at_coverage(conf, ok, 0.9),
                risk_at_95=risk_at_coverage(conf, ok, 0.95), coverage_at_5=coverage_at_risk(conf, ok, 0.05))
