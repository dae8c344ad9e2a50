"""Conformal prediction sets (issue #34): the guarantee holds within binomial bounds on synthetic data, a hand-computed
quantile, nested sets, per-class coverage of the class-conditional form, thin data refused or its fallback stated,
and the sets in `eval`, `compare`, `predict --coverage` and the Python API."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from cskd_fastai.metrics.conformal import (ConformalError, min_calibration, prediction_sets, random_split_evaluation,
                                           set_metrics)

from test_cli import _one_error_line, cli


def _synthetic(n: int, c: int = 10, seed: int = 0, hard_class: int | None = None):
    "Softmax of noisy logits with a bump on the true class (a hard class gets no bump)."
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)) * 1.5
    bump = np.where(y == hard_class, 0.0, 2.5) if hard_class is not None else 2.5
    z[np.arange(n), y] += bump
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


@pytest.mark.parametrize("score", ["lac", "aps_randomized", "raps_randomized"])
def test_coverage_is_within_binomial_bounds_of_the_target(score):
    """Over R independent calibration/test draws the mean coverage of split conformal is E = (n+1-l)/(n+1),
    l = floor((n+1)α), the coverage of one draw being Beta(n+1-l, l) plus binomial test noise: 4 standard errors."""
    n, m, R, alpha = 200, 200, 40, 0.1
    covs = []
    for r in range(R):
        p, y = _synthetic(n + m, seed=r)
        covs.append(set_metrics(prediction_sets(p[:n], y[:n], p[n:], 1 - alpha, score).sets, y[n:])["coverage"])
    l = math.floor((n + 1) * alpha)
    a, b = n + 1 - l, l
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1)) + mean * (1 - mean) / m
    se = math.sqrt(var / R)
    if score.endswith("randomized"): assert abs(np.mean(covs) - (1 - alpha)) <= 4 * se + 1 / (n + 1), np.mean(covs)
    else: assert abs(np.mean(covs) - mean) <= 4 * se, (np.mean(covs), mean, se)


def test_a_hand_computed_lac_quantile():
    "n = 9 calibration scores 1 - p_true; α = 0.2: the ⌈(n+1)(1-α)⌉ = 8th smallest score (0.6) is the threshold."
    p_true = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    cal = np.stack([p_true, 1 - p_true, np.zeros(9)], 1)
    test = np.array([[0.5, 0.42, 0.08], [0.35, 0.33, 0.32], [0.39, 0.61, 0.0]])
    sets = prediction_sets(cal, np.zeros(9, int), test, 0.8, "lac").sets
    # set = {k : 1 - p_k <= 0.6} = {k : p_k >= 0.4}
    assert sets.tolist() == [[True, True, False], [False, False, False], [False, True, False]]


@pytest.mark.parametrize("score", ["lac", "aps"])   # (RAPS tunes its penalty per coverage: not nested by design)
def test_sets_are_nested_as_alpha_falls(score):
    p, y = _synthetic(1200, seed=3)
    s80, s90, s95 = (prediction_sets(p[:600], y[:600], p[600:], c, score).sets for c in (0.8, 0.9, 0.95))
    assert (s80 <= s90).all() and (s90 <= s95).all() and s80.sum() < s95.sum()


def test_the_class_conditional_form_covers_each_class():
    """One hard class: marginal sets under-cover it; the class-conditional (Mondrian) ones cover it, and every class,
    at 1 - α on average over draws (each class's mean within 4 binomial standard errors below 0.9, or above)."""
    hits = {False: [], True: []}
    for r in range(10):
        p, y = _synthetic(4000, c=5, seed=r, hard_class=0)
        for classwise in (False, True):
            cs = prediction_sets(p[:2000], y[:2000], p[2000:], 0.9, "lac", classwise=classwise)
            yt = y[2000:]
            hit = cs.sets[np.arange(len(yt)), yt]
            hits[classwise].append([hit[yt == k].mean() for k in range(5)])
    marginal, classwise = np.array(hits[False]).mean(0), np.array(hits[True]).mean(0)
    se = math.sqrt(0.9 * 0.1 / (10 * 400))
    assert marginal[0] < 0.8 and (classwise >= 0.9 - 4 * se).all(), (marginal, classwise)


def test_thin_data_is_refused_or_its_fallback_stated():
    p, y = _synthetic(100, seed=1)
    assert min_calibration(0.9) == 9 and min_calibration(0.95) == 19
    with pytest.raises(ConformalError, match="too small for coverage 0.95.*at least 19.*at most 0.9"):
        prediction_sets(p[:10], y[:10], p[10:], 0.95)
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ConformalError, match="strictly between 0 and 1"): prediction_sets(p[:50], y[:50], p[50:], bad)
    y2 = y.copy(); y2[:50][y2[:50] == 3] = 4                                   # class 3 absent from calibration
    cs = prediction_sets(p[:50], y2[:50], p[50:], 0.9, classwise=True)
    assert 3 in cs.fallback_classes and "marginal threshold" in cs.note
    marginal = prediction_sets(p[:50], y2[:50], p[50:], 0.9).sets
    assert (cs.sets[:, 3] == marginal[:, 3]).all() and not cs.sets.all(1).all()   # stated fallback, not all classes


def test_random_split_evaluation_reports_mean_and_spread():
    p, y = _synthetic(1000, seed=5)
    r = random_split_evaluation(p, y, 0.9, "lac", n_draws=30)
    assert 0.88 <= r["coverage"][0] <= 0.93 and 0 < r["coverage"][1] < 0.03 and r["mean_size"][0] > 1


# ---- from a finished run -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from cskd_fastai.testing.replicas import make_imagefolder
    from test_field import _recipe
    d = tmp_path_factory.mktemp("conf")
    data = make_imagefolder(d / "data", n_per_class=40, n_classes=3, n_test_per_class=10)
    code, out = cli("train", _recipe(d / "r.yaml", "tiny", "imagefolder", data, epochs=2), "--out", d / "runs",
                    "--no-progress")
    assert code == 0, out
    return d / "runs" / "tiny" / "ce" / "seed0", data


def test_eval_and_compare_report_coverage_and_set_size(run):
    path, _ = run
    code, out = cli("eval", path)
    assert code == 0, out
    report = json.loads(out[out.index("{"):])
    assert {"aurc", "e_aurc", "augrc", "risk_at_90", "coverage_at_5"} <= set(report["selective"]["T=1"])   # issue #39
    conf = report["conformal"]
    assert conf["n_calibration"] == 30 and set(conf["lac"]) == {"0.9", "0.95"}
    for name in ("lac", "aps_randomized", "raps_randomized", "lac_classwise"):
        for c in ("0.9", "0.95"):
            m = conf[name][c]
            if "error" in m:   # RAPS tunes its penalty on part of 30 images: too few, said in one line
                assert name.startswith("raps") and "\n" not in m["error"] and "calibrate on more" in m["error"], m
            else: assert 0 <= m["coverage"] <= 1 and 0 <= m["mean_size"] <= 3 and "worst_class_coverage" in m
    code, out = cli("compare", path)
    assert code == 0 and "cov@90" in out and "size@90" in out and "calibrated on the validation split" in out, out
    code, out = cli("compare", path, "--sets")
    row = next(l for l in out.splitlines() if l.startswith("| tiny | ce |"))
    cells = [c.strip() for c in row.strip("|").split("|")][3:]
    assert "LAC 95% median size" in out and "class-cond. 90% worst class coverage" in out and len(cells) == 8
    assert float(cells[0]) == pytest.approx(conf["lac"]["0.9"]["coverage"], abs=1e-3)     # the same sets as eval's


def test_predict_writes_each_images_set_and_the_python_api_agrees(run, tmp_path):
    from cskd_fastai.sets import conformal_sets
    path, data = run
    images = sorted((data / "test").rglob("*.png"))[:4]
    code, out = cli("predict", path, *images, "--coverage", "0.9", "--csv", tmp_path / "p.csv")
    assert code == 0 and "prediction sets: The true class is in the set for at least 90%" in out, out
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 4 and all(r["set_size"] != "" for r in rows)
    api = conformal_sets(path, images, coverage=0.9)
    for r, s in zip(rows, api):
        assert int(r["set_size"]) == len(s) and r["set"] == "; ".join(f"{c} ({p:.6f})" for c, p in s)
    _one_error_line(*cli("predict", path, *images, "--coverage", "1.2"), "--coverage", "between 0 and 1")
    _one_error_line(*cli("predict", path, *images, "--coverage", "0.99"), "too small for coverage 0.99")
    _one_error_line(*cli("predict", path, *images, "--csv", tmp_path / "nodir" / "p.csv"), "does not exist")
