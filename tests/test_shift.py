"""Calibration under corruption (issue #39 part 3): severities, deterministic cached corruptions, the report's means
and the mCE-style ratio by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cskd_fastai.shift import CORRUPTIONS, corrupted_set, parse_severities, relative_errors, shift_report

corruptions = pytest.importorskip("imagecorruptions", reason="needs the [shift] extra (imagecorruptions-imaug)")


def test_parse_severities():
    assert parse_severities("1-5") == [1, 2, 3, 4, 5] and parse_severities("5,1,3") == [1, 3, 5]
    assert parse_severities("2") == [2] and parse_severities("1-2,4") == [1, 2, 4]
    for bad in ("0", "6", "a", "", "3-9"):
        with pytest.raises(ValueError, match="severities between 1 and 5"): parse_severities(bad)


@pytest.fixture
def images(tmp_path):
    g = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(40, 30), (24, 48), (32, 32)]):
        p = tmp_path / f"im{i}.png"; Image.fromarray(g.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p); paths.append(p)
    return paths


def test_corruptions_are_deterministic_cached_and_clean_is_the_centre_square(images, tmp_path):
    clean = corrupted_set(images, 16, "clean", 0)
    assert clean.shape == (3, 16, 16, 3) and clean.dtype == np.uint8
    a = corrupted_set(images, 16, "gaussian_noise", 3, tmp_path / "c", clean=clean)
    b = corrupted_set(images, 16, "gaussian_noise", 3)                    # no cache: recomputed, same pixels
    assert np.array_equal(a, b) and not np.array_equal(a, clean)
    assert not np.array_equal(a, corrupted_set(images, 16, "gaussian_noise", 5))   # severity matters
    f = next((tmp_path / "c").glob("*-gaussian_noise-3.npy"))
    np.save(f, np.zeros_like(a))                                         # the cache is what is read back
    assert not corrupted_set(images, 16, "gaussian_noise", 3, tmp_path / "c").any()


def test_report_means_and_relative_errors_by_hand(images, tmp_path):
    labels = torch.tensor([0, 1, 0])
    # a "model" whose logits are the mean of each channel pair: deterministic, and changed by the corruptions
    predict = lambda xs: torch.stack([torch.tensor([x[..., 0].mean() / 64.0, x[..., 1].mean() / 64.0]) for x in xs])
    rep = shift_report(predict, images, labels, 16, T=2.0, severities=[1, 2], corruptions=CORRUPTIONS[:2],
                       cache_dir=tmp_path / "c")
    assert set(rep["corruptions"]) == set(CORRUPTIONS[:2]) and set(rep["corruptions"]["shot_noise"]) == {"1", "2"}
    cells = [v for per in rep["corruptions"].values() for v in per.values()]
    assert rep["mean"]["top1_err"] == pytest.approx(np.mean([c["top1_err"] for c in cells]))
    assert rep["mean_by_severity"]["2"]["nll_ts"] == pytest.approx(
        np.mean([rep["corruptions"][c]["2"]["nll_ts"] for c in CORRUPTIONS[:2]]))
    ref = {"corruptions": {"gaussian_noise": {"1": {"top1_err": 0.5}, "2": {"top1_err": 0.5}},
                           "shot_noise": {"1": {"top1_err": 0.25}, "2": {"top1_err": 0.25}}}}
    mine = {"corruptions": {"gaussian_noise": {"1": {"top1_err": 0.25}, "2": {"top1_err": 0.25}},
                            "shot_noise": {"1": {"top1_err": 0.5}, "2": {"top1_err": 0.0}}}}
    r = relative_errors(mine, ref)
    assert r["per_corruption"] == {"gaussian_noise": 0.5, "shot_noise": 1.0} and r["mCE"] == 0.75
    with pytest.raises(ValueError, match="same --shift severities"):
        relative_errors(mine, {"corruptions": {"gaussian_noise": {"1": {"top1_err": 0.5}}}})
