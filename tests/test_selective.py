"""Selective prediction metrics (issue #39 part 1): hand-computed values, ties, and the published formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cskd_fastai.metrics.selective import (augrc, aurc, coverage_at_risk, e_aurc, risk_at_coverage,
                                           risk_coverage_curve, selective_metrics)


def test_hand_computed_curve_and_areas():
    conf = [0.9, 0.8, 0.7, 0.6]
    ok = [True, False, True, False]
    cov, risk = risk_coverage_curve(conf, ok)
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0] and np.allclose(risk, [0, 1 / 2, 1 / 3, 1 / 2])
    assert aurc(conf, ok) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert augrc(conf, ok) == pytest.approx((0 + 1 / 4 + 1 / 4 + 2 / 4) / 4)     # errors accepted / N, per step
    # perfect ranking of 2 correct + 2 errors: risks 0, 0, 1/3, 1/2
    assert e_aurc(conf, ok) == pytest.approx(aurc(conf, ok) - (0 + 0 + 1 / 3 + 1 / 2) / 4)
    assert risk_at_coverage(conf, ok, 0.5) == pytest.approx(0.5) and coverage_at_risk(conf, ok, 0.4) == 0.75


def test_ties_enter_together():
    "Three images tied at 0.8 (one wrong): no threshold takes only some of them."
    conf = [0.9, 0.8, 0.8, 0.8, 0.1]
    ok = [True, True, False, True, False]
    cov, risk = risk_coverage_curve(conf, ok)
    assert cov.tolist() == [0.2, 0.8, 1.0] and np.allclose(risk, [0, 1 / 4, 2 / 5])
    assert aurc(conf, ok) == pytest.approx(0.2 * 0 + 0.6 * 0.25 + 0.2 * 0.4)
    # the order of tied items does not matter
    assert aurc(conf, [True, False, True, True, False]) == pytest.approx(aurc(conf, ok))


def test_perfect_ranking_has_zero_e_aurc_and_the_published_limit():
    "E-AURC = 0 for a perfect ranking; the optimal AURC tends to r + (1 - r)·ln(1 - r) (Geifman et al. 2019)."
    n, r = 20000, 0.3
    ok = np.r_[np.ones(int(n * (1 - r)), bool), np.zeros(int(n * r), bool)]
    conf = np.linspace(1, 0, n)                      # correct ones most confident
    assert e_aurc(conf, ok) == pytest.approx(0, abs=1e-12)
    assert aurc(conf, ok) == pytest.approx(r + (1 - r) * math.log(1 - r), abs=1e-3)
    rng = np.random.default_rng(0)
    assert e_aurc(rng.random(n), ok) > 0.1            # a random ranking is far from it


def test_selective_metrics_from_logits_and_bad_input():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 5)); y = rng.integers(0, 5, 500); z[np.arange(500), y] += 2
    m = selective_metrics(z, y)
    assert set(m) == {"aurc", "e_aurc", "augrc", "risk_at_80", "risk_at_90", "risk_at_95", "coverage_at_5"}
    assert 0 <= m["e_aurc"] <= m["aurc"] <= 1 and m["risk_at_80"] <= m["risk_at_95"] + 1e-12
    # a temperature can reorder images by max softmax (it is not monotone across logit vectors): both are reported
    assert selective_metrics(z, y, T=2.0)["aurc"] != m["aurc"]
    with pytest.raises(ValueError, match="equal, non-empty"): aurc([0.5, 0.4], [True])
    with pytest.raises(ValueError, match="finite"): aurc([float("nan")], [True])


def test_fastai_metrics_stream_what_the_functional_core_gives():
    """AURC/AUGRC as fastai metrics, fed batch by batch as a validation pass does, equal the functional values on the
    concatenated logits; a fresh metric after `reset` has no value."""
    from types import SimpleNamespace
    import torch
    from cskd_fastai.metrics import AUGRC, AURC
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(37, 5, generator=g) * 3, torch.randint(0, 5, (37,), generator=g)
    want = selective_metrics(z.numpy(), y.numpy())
    for metric, key in ((AURC(), "aurc"), (AUGRC(), "augrc")):
        metric.reset()
        assert metric.value is None
        for i in range(0, 37, 8): metric.accumulate(SimpleNamespace(pred=z[i:i + 8], yb=(y[i:i + 8],)))
        assert metric.name == key and metric.value == pytest.approx(want[key], abs=1e-12)
