"Metrics vs independent references (sklearn, NumPy), the ECE last-bin fix, and streaming fastai metrics (CPU, fast)."
from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, top_k_accuracy_score
from torchmetrics.functional.classification import multiclass_calibration_error

from cskd_fastai.metrics import (ECE, NLL, Brier, TopKError, TopLabelCalibrationError, brier_score,
                                 calibration_bins, calibration_error, calibration_error_from_confidences,
                                 classification_metrics, cskd_metrics, nll, top_k_error)

SHAPES = [(64, 10), (257, 100), (33, 3), (500, 7)]
SEEDS = [0, 1, 2]


def make_logits(seed: int, n: int, c: int, scale: float = 3.0, dtype=torch.float32):
    "Random logits (scaled to span low and high confidences) and targets correlated with them."
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale)
    targets = torch.distributions.Categorical(logits=logits / 2).sample()  # better than chance, not perfect
    return logits.to(dtype), targets


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    "Loop-based ECE with bins [k/n, (k+1)/n), last bin [(n-1)/n, 1]: bin = min(floor(conf * n), n - 1)."
    bins = np.minimum(np.floor(conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def ref_ece_from_logits(logits: torch.Tensor, targets: torch.Tensor, n_bins: int) -> float:
    p = np_softmax(logits.double().numpy())
    pred = p.argmax(axis=1)  # NumPy argmax also takes the first index on ties
    return ref_ece(p.max(axis=1), (pred == targets.numpy()).astype(float), n_bins)


# --- functional vs references ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,c", SHAPES)
def test_nll_matches_sklearn(seed, n, c):
    logits, targets = make_logits(seed, n, c)
    expected = log_loss(targets.numpy(), np_softmax(logits.double().numpy()), labels=np.arange(c))
    assert float(nll(logits, targets)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,c", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_error_matches_sklearn(seed, n, c, k):
    logits, targets = make_logits(seed, n, c)
    if k >= c:  # k is clipped to C: every target is a hit (sklearn would warn here)
        assert float(top_k_error(logits, targets, k)) == 0.0
        return
    acc = top_k_accuracy_score(targets.numpy(), logits.double().numpy(), k=k, labels=np.arange(c))
    assert float(top_k_error(logits, targets, k)) == pytest.approx(1 - acc, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,c", SHAPES)
@pytest.mark.parametrize("n_bins", [15, 10, 4])
def test_ece_matches_numpy_reference(seed, n, c, n_bins):
    logits, targets = make_logits(seed, n, c)
    assert float(calibration_error(logits, targets, n_bins)) == pytest.approx(
        ref_ece_from_logits(logits, targets, n_bins), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,c", SHAPES)
def test_brier_matches_numpy(seed, n, c):
    logits, targets = make_logits(seed, n, c)
    p = np_softmax(logits.double().numpy())
    onehot = np.eye(c)[targets.numpy()]
    expected = ((p - onehot) ** 2).sum(axis=1).mean()
    assert float(brier_score(logits, targets)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_low_precision_logits_are_upcast(dtype):
    logits, targets = make_logits(3, 200, 10, dtype=dtype)
    got = classification_metrics(logits, targets)
    # reference on the same (already rounded) values, in float64
    z = logits.double()
    assert got["nll"] == pytest.approx(log_loss(targets.numpy(), np_softmax(z.numpy()), labels=np.arange(10)),
                                       rel=1e-9)
    assert got["ece"] == pytest.approx(ref_ece_from_logits(z, targets, 15), abs=1e-12)


# --- ECE binning: confidences of exactly 1.0 and exactly on bin edges ---------------------------------------------

@pytest.mark.parametrize("n_bins", [2, 4, 8, 16])
def test_ece_on_exact_bin_edges(n_bins):
    # dyadic edges are exact in binary floating point, so "on the edge" is unambiguous for both implementations
    edges = np.arange(n_bins + 1) / n_bins
    conf = np.concatenate([edges[1:], edges[1:], [1.0, 1.0, 1.0], edges[1:-1] - 1e-9])
    rng = np.random.default_rng(n_bins)
    correct = rng.integers(0, 2, conf.size).astype(float)
    got = calibration_error_from_confidences(torch.tensor(conf), torch.tensor(correct), n_bins)
    assert float(got) == pytest.approx(ref_ece(conf, correct, n_bins), abs=1e-12)
    # and the per-bin counts: an edge k/n opens bin k, 1.0 closes the last bin
    count, _, _ = calibration_bins(torch.tensor(conf), torch.tensor(correct), n_bins)
    ref_bins = np.minimum(np.floor(conf * n_bins).astype(int), n_bins - 1)
    np.testing.assert_array_equal(count.numpy(), np.bincount(ref_bins, minlength=n_bins))


def test_ece_from_logits_with_saturated_and_edge_confidences():
    n_bins = 4
    # saturated rows: softmax max is exactly 1.0; tied rows over 2 and 4 classes: exactly 0.5 and 0.25 (edges)
    sat = torch.tensor([[60.0, 0, 0, 0], [0, 70.0, 0, 0], [0, 0, 80.0, 0]])
    tie2 = torch.tensor([[5.0, 5.0, -1e4, -1e4], [-1e4, 3.0, 3.0, -1e4]])
    tie4 = torch.zeros(2, 4)
    logits = torch.cat([sat, tie2, tie4, torch.randn(20, 4, generator=torch.Generator().manual_seed(0))])
    targets = torch.cat([torch.tensor([0, 3, 2, 1, 1, 0, 2]), torch.randint(0, 4, (20,))])
    conf = logits.double().softmax(1).amax(1)
    assert (conf[:3] == 1.0).all() and (conf[3:5] == 0.5).all() and (conf[5:7] == 0.25).all()
    assert float(calibration_error(logits, targets, n_bins)) == pytest.approx(
        ref_ece_from_logits(logits, targets, n_bins), abs=1e-12)


def test_fix_matters_vs_naive_torchmetrics():
    # upstream torchmetrics 1.9: bucketize(..., right=True) - 1 puts conf == 1.0 in an extra (n+1)-th bin
    assert int(torch.bucketize(torch.tensor([1.0]), torch.linspace(0, 1, 16), right=True) - 1) == 15
    # A: conf 1.0, wrong; B: conf ~0.95, right. Both belong to the top bin [14/15, 1], whose mean accuracy 0.5 vs
    # mean confidence ~0.975 gives ECE ~0.475; binned apart, naive torchmetrics reports 0.5 + 0.025 = 0.525.
    logits = torch.tensor([[100.0, 0.0], [0.0, float(np.log(19.0))]])
    targets = torch.tensor([1, 1])
    conf = logits.double().softmax(1).amax(1)
    assert conf[0] == 1.0 and conf[1] > 14 / 15
    ours = float(calibration_error(logits, targets, 15))
    naive = float(multiclass_calibration_error(logits, targets, num_classes=2, n_bins=15))
    assert ours == pytest.approx(ref_ece_from_logits(logits, targets, 15), abs=1e-12)
    assert ours == pytest.approx(0.475, abs=1e-6)
    assert naive == pytest.approx(0.525, abs=1e-6)


def test_logits_in_unit_interval_are_still_softmaxed():
    # torchmetrics' `normalize_logits_if_needed` would take these for probabilities; logits are always logits here
    logits = torch.rand(50, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 5, (50,), generator=torch.Generator().manual_seed(1))
    assert float(calibration_error(logits, targets)) == pytest.approx(
        ref_ece_from_logits(logits, targets, 15), abs=1e-12)


def test_bins_agree_with_ece():
    logits, targets = make_logits(0, 300, 10)
    conf = logits.double().softmax(1).amax(1)
    correct = (logits.argmax(1) == targets).double()
    count, acc, mc = calibration_bins(conf, correct, 15)
    assert int(count.sum()) == 300
    full = count > 0
    assert torch.isnan(acc[~full]).all() and torch.isnan(mc[~full]).all()
    ece = float((count[full] / 300 * (acc[full] - mc[full]).abs()).sum())
    assert ece == pytest.approx(float(calibration_error(logits, targets, 15)), abs=1e-12)


# --- classification_metrics ---------------------------------------------------------------------------------------

def test_classification_metrics_keys_and_k_clipping():
    logits, targets = make_logits(0, 40, 3)
    m = classification_metrics(logits, targets)
    assert list(m) == ["top1_err", "top5_err", "ece", "ece_adaptive", "ece_classwise", "nll", "brier"]
    assert all(isinstance(v, float) for v in m.values())
    assert m["top5_err"] == 0.0  # k = min(5, 3) = 3 classes: always a hit
    assert m["top1_err"] == pytest.approx(1 - (logits.argmax(1) == targets).double().mean().item())


def test_top1_ties_break_like_argmax():
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    assert float(top_k_error(logits, torch.tensor([0, 1, 0]), 1)) == 0.0
    assert float(top_k_error(logits, torch.tensor([1, 2, 2]), 1)) == 1.0
    assert float(top_k_error(logits, torch.tensor([1, 2, 1]), 2)) == 0.0


@pytest.mark.parametrize("logits,targets,match", [
    (torch.randn(4), torch.zeros(4, dtype=torch.long), "shape \\(N, C\\)"),
    (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), "shape \\(N, C\\)"),
    (torch.randint(0, 3, (4, 3)), torch.zeros(4, dtype=torch.long), "floating-point"),
    (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), "targets of shape \\(4,\\)"),
    (torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.long), "targets of shape \\(4,\\)"),
    (torch.randn(4, 3), torch.zeros(4), "integer"),
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), "targets in \\[0, 3\\)"),
    (torch.randn(4, 3), torch.tensor([0, -1, 2, 1]), "targets in \\[0, 3\\)"),
])
def test_invalid_inputs_raise(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(logits, targets)


def test_invalid_n_bins_and_k():
    logits, targets = make_logits(0, 8, 4)
    with pytest.raises(ValueError, match="n_bins"):
        calibration_error(logits, targets, n_bins=0)
    with pytest.raises(ValueError, match="k to be"):
        top_k_error(logits, targets, k=0)
    with pytest.raises(ValueError, match="confidences in \\[0, 1\\]"):
        calibration_error_from_confidences(torch.tensor([1.5]), torch.tensor([1.0]))


# --- streaming fastai metrics -------------------------------------------------------------------------------------

def run_batches(metrics, logits, targets, sizes):
    for m in metrics: m.reset()
    start = 0
    for bs in sizes:
        learn = SimpleNamespace(pred=logits[start:start + bs], yb=(targets[start:start + bs],))
        for m in metrics: m.accumulate(learn)
        start += bs
    assert start == len(targets)
    return {m.name: m.value for m in metrics}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,c,sizes", [(100, 10, [32, 32, 32, 4]), (257, 100, [1, 100, 156]), (33, 3, [33])])
def test_streaming_equals_one_shot(seed, n, c, sizes):
    logits, targets = make_logits(seed, n, c)
    got = run_batches(cskd_metrics(), logits, targets, sizes)
    expected = classification_metrics(logits, targets)
    assert list(got) == list(expected)
    for k in expected:
        assert got[k] == pytest.approx(expected[k], abs=1e-12), k


def test_streaming_reset_and_empty():
    metrics = cskd_metrics(n_bins=10)
    assert all(m.value is None for m in metrics)
    a, ta = make_logits(0, 50, 6)
    b, tb = make_logits(1, 70, 6)
    run_batches(metrics, a, ta, [25, 25])
    got = run_batches(metrics, b, tb, [70])  # reset must drop everything from the first pass
    expected = classification_metrics(b, tb, n_bins=10)
    assert all(got[k] == pytest.approx(expected[k], abs=1e-12) for k in expected)


def test_metrics_pickle_roundtrip():
    logits, targets = make_logits(0, 60, 8)
    metrics = cskd_metrics()
    before = run_batches(metrics, logits, targets, [30, 30])
    clones = pickle.loads(pickle.dumps(metrics))
    assert {m.name: m.value for m in clones} == pytest.approx(before)
    assert run_batches(clones, logits, targets, [60]) == pytest.approx(before)


def test_metric_names_and_torchmetrics_class():
    assert [m.name for m in cskd_metrics()] == ["top1_err", "top5_err", "ece", "ece_adaptive", "ece_classwise", "nll", "brier"]
    assert [TopKError(3).name, NLL().name, Brier().name, ECE().name] == ["top3_err", "nll", "brier", "ece"]
    logits, targets = make_logits(2, 90, 5)
    tm = TopLabelCalibrationError(n_bins=15)
    tm.update(logits[:40], targets[:40])
    tm.update(logits[40:], targets[40:])
    assert float(tm.compute()) == pytest.approx(float(calibration_error(logits, targets)), abs=1e-12)


def test_real_learner_validate_matches_functional(tmp_path):
    import warnings
    from fastai.data.core import Datasets
    from fastai.data.transforms import IndexSplitter, ItemGetter
    from fastai.learner import Learner, load_learner
    from fastai.torch_core import noop
    from torch import nn
    import fastai.callback.progress  # noqa: F401  (patches Learner.no_bar, as fastai.vision.all does)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(229, 8, generator=g)
    y = torch.distributions.Categorical(logits=x @ torch.randn(8, 6, generator=g)).sample()
    # 101 validation items with bs 16: several batches and a ragged last one
    dsets = Datasets(list(zip(x, y)), tfms=[[ItemGetter(0)], [ItemGetter(1)]],
                     splits=IndexSplitter(range(128, 229))(range(229)))
    dls = dsets.dataloaders(bs=16, device="cpu")
    torch.manual_seed(0)
    learn = Learner(dls, nn.Linear(8, 6), loss_func=nn.CrossEntropyLoss(), metrics=cskd_metrics())
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
        values = learn.validate()
        # act=noop: with a fastai loss (CrossEntropyLossFlat) get_preds would return softmax probabilities
        logits, targets = learn.get_preds(act=noop)
    got = dict(zip([m.name for m in learn.metrics], values[1:]))
    expected = classification_metrics(logits, targets)
    assert logits.shape == (101, 6) and list(got) == list(expected)
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-9), k

    # `Learner.export` pickles the metrics; the reloaded learner reports the same values
    learn.export(tmp_path / "learn.pkl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_learner warns that pickle is unsafe
        loaded = load_learner(tmp_path / "learn.pkl")
    assert [m.name for m in loaded.metrics] == list(expected)
    with loaded.no_bar(), loaded.no_logging():
        reloaded = loaded.validate(dl=dls.valid)
    assert list(reloaded[1:]) == pytest.approx(list(values[1:]), rel=1e-6)


# ---- equal-mass and class-wise ECE, by hand ---------------------------------------------------------------------
def _hand_adaptive(conf, correct, n_bins):
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for g in np.array_split(order, n_bins):
        if len(g): total += len(g) * abs(correct[g].mean() - conf[g].mean())
    return total / len(conf)


def _hand_classwise(p, y, n_bins):
    n, c = p.shape
    total = 0.0
    for k in range(c):
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            m = (p[:, k] >= lo) & ((p[:, k] < hi) if b < n_bins - 1 else (p[:, k] <= 1.0))
            if m.any(): total += m.sum() / n * abs((y[m] == k).mean() - p[m, k].mean())
    return total / c


@pytest.mark.parametrize("seed,n,c,n_bins", [(0, 50, 4, 15), (1, 7, 3, 3), (2, 200, 10, 10), (3, 16, 2, 5)])
def test_adaptive_and_classwise_ece_match_hand_computations(seed, n, c, n_bins):
    from cskd_fastai.metrics import adaptive_calibration_error, classwise_calibration_error
    logits, targets = make_logits(seed, n, c)
    p = torch.softmax(logits.double(), 1).numpy()
    y = targets.numpy()
    conf, correct = p.max(1), (logits.double().argmax(1).numpy() == y).astype(float)
    assert float(adaptive_calibration_error(logits, targets, n_bins)) == pytest.approx(
        _hand_adaptive(conf, correct, n_bins), abs=1e-12)
    assert float(classwise_calibration_error(logits, targets, n_bins)) == pytest.approx(
        _hand_classwise(p, y, n_bins), abs=1e-12)


def test_adaptive_ece_on_a_tiny_example():
    "Four samples, two equal-mass bins: {0.6 wrong, 0.7 right}, {0.8 right, 0.9 right} -> (2|.5-.65| + 2|1-.85|)/4."
    from cskd_fastai.metrics import adaptive_calibration_error
    conf = torch.tensor([0.6, 0.7, 0.8, 0.9], dtype=torch.float64)
    logits = torch.stack([torch.log(conf), torch.log(1 - conf)], 1)     # p(class 0) = conf
    targets = torch.tensor([1, 0, 0, 0])
    assert float(adaptive_calibration_error(logits, targets, 2)) == pytest.approx((2 * 0.15 + 2 * 0.15) / 4)
