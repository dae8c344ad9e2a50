"""Unfamiliar-image detection (issue #39 part 2): hand-computed scores, AUROC/AUPR/FPR95 with ties, the flag rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cskd_fastai.metrics.ood import (SCORES, familiarity_flag, flagged, fpr_at_tpr, ood_metrics, ood_score,
                                     threshold_at_tpr)


def test_scores_by_hand():
    z = np.array([[0.0, math.log(3.0)]])
    assert ood_score(z, "msp")[0] == pytest.approx(0.75)
    assert ood_score(z, "energy")[0] == pytest.approx(math.log(4.0))
    assert ood_score(z, "entropy")[0] == pytest.approx(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert ood_score(z, "max_logit", T=2.0)[0] == pytest.approx(math.log(3.0))          # the same at any T
    assert ood_score(z, "energy", T=2.0)[0] == pytest.approx(2 * math.log(1 + math.sqrt(3)))
    assert ood_score(z, "msp", T=2.0)[0] == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)))
    with pytest.raises(ValueError, match="unknown OOD score"): ood_score(z, "odin")
    with pytest.raises(ValueError, match="positive"): ood_score(z, "msp", T=0)


def test_metrics_by_hand():
    a, b = [0.9, 0.8, 0.7, 0.6], [0.65, 0.5]
    m = ood_metrics(a, b)
    assert m["auroc"] == pytest.approx(7 / 8)                 # in > out for 7 of the 8 pairs
    assert m["aupr_in"] == pytest.approx((1 + 1 + 1 + 4 / 5) / 4)
    assert m["aupr_out"] == pytest.approx((1 + 2 / 3) / 2)
    assert threshold_at_tpr(a, 0.95) == 0.6 and m["fpr95"] == 0.5      # keeping 95% of 4 means keeping all 4
    assert threshold_at_tpr(a, 0.75) == 0.7 and fpr_at_tpr(a, b, 0.75) == 0.0
    assert (m["n_in"], m["n_out"]) == (4, 2)


def test_ties_count_half_and_are_kept_together():
    m = ood_metrics([0.5, 0.5], [0.5])
    assert m["auroc"] == pytest.approx(0.5) and m["fpr95"] == 1.0
    assert threshold_at_tpr([0.9, 0.5, 0.5, 0.5], 0.5) == 0.5


def test_threshold_keeps_the_share_it_promises_on_random_scores():
    g = np.random.default_rng(0)
    for n in (1, 7, 20, 101):
        s = g.normal(size=n)
        t = threshold_at_tpr(s, 0.95)
        assert np.mean(s >= t) >= 0.95 and (n == 1 or np.mean(s > t) < 0.95)


def test_flag_rule_flags_flat_predictions_and_about_one_in_twenty_validation_images():
    g = np.random.default_rng(1)
    valid = g.normal(size=(400, 10)) * 4
    flag = familiarity_flag(valid, T=1.5)
    assert flag["score"] == "msp" and flag["T"] == 1.5 and flag["tpr"] == 0.95
    share = flagged(valid, flag).mean()
    assert 0.0 < share <= 0.05                                 # at most 5% by construction (ties kept)
    assert flagged(np.zeros(10), flag)[0]                      # a uniform prediction is unfamiliar
    assert not flagged(np.r_[30.0, np.zeros(9)], flag)[0]      # a confident one is not


def test_separable_sets_score_perfectly_for_every_score():
    g = np.random.default_rng(2)
    z_in = g.normal(size=(50, 5)); z_in[np.arange(50), g.integers(0, 5, 50)] += 12     # confident
    z_out = g.normal(size=(30, 5)) * 0.1                                                  # flat
    for s in SCORES:
        m = ood_metrics(ood_score(z_in, s), ood_score(z_out, s))
        assert m["auroc"] == 1.0 and m["fpr95"] == 0.0, s


def test_holdout_classes_by_name_or_seeded_count_and_bad_specs():
    "`dataset.holdout_classes` leaves classes out of training, renumbered; the held-out part keeps only them."
    from types import SimpleNamespace
    from cskd_fastai.datasets import ImageDataset, ImageSplit
    from cskd_fastai.pipeline import _classes_only, holdout_names
    names = ["a", "b", "c", "d", "e"]
    assert holdout_names(names, ["d", "b"]) == ["b", "d"]            # dataset order
    two = holdout_names(names, 2)
    assert len(two) == 2 and two == holdout_names(names, 2) and set(two) <= set(names)   # seeded: same every time
    with pytest.raises(ValueError, match="fewer than 2"): holdout_names(names, 4)
    with pytest.raises(ValueError, match="'z', which is not a class"): holdout_names(names, ["z"])
    data = ImageDataset("toy", names, ImageSplit(list("ABCDE"), [0, 1, 2, 3, 4]), ImageSplit(list("vwxyz"), [4, 3, 2, 1, 0]))
    kept = _classes_only(data, ["a", "c", "e"])
    assert kept.classes == ["a", "c", "e"] and kept.train.items == ["A", "C", "E"] and kept.train.labels == [0, 1, 2]
    assert kept.test.items == ["v", "x", "z"] and kept.test.labels == [2, 1, 0]
