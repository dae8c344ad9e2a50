"""Representation measures of the CS-KD paper's analyses (Yun et al., CVPR 2020, Sec. 4): Recall@k of embeddings,
intra-class variation and over-confident errors. Pure functions of tensors; `analysis.py` runs them on runs."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["recall_at_k", "intra_class_stats", "overconfidence", "RECALL_KS", "OVERCONFIDENCE_THRESHOLD"]

RECALL_KS: tuple[int, ...] = (1, 2, 4, 8)
OVERCONFIDENCE_THRESHOLD = 0.9




def as_tensor(x, dtype=torch.float32) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t.to("cpu", dtype)


def _check_xy(x: Tensor, y: Tensor, what: str) -> None:
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected {what} of shape (N, D) with N >= 1, got {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"expected labels of shape ({x.shape[0]},) to match {what} {tuple(x.shape)}, "
                         f"got {tuple(y.shape)}")


def recall_at_k(emb, labels, ks: Sequence[int] = RECALL_KS, chunk: int = 1024) -> dict[int, float]:
    """Recall@k of embeddings, the retrieval measure the CS-KD paper reports (R@1) for penultimate features.

    For every sample (query), the other N-1 samples are ranked by cosine similarity to it (the query itself is
    excluded); the query scores 1 when at least one of its `k` nearest neighbours has its label. Recall@k is the
    mean over *all* queries (a query alone in its class always scores 0). `k` above N-1 is clipped to N-1.
    Returns `{k: recall}`. Exact ties in similarity are broken arbitrarily (`torch.topk`).
    """
    e = as_tensor(emb)
    y = as_tensor(labels, torch.long)
    _check_xy(e, y, "embeddings")
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"expected positive ks, got {ks}")
    n = e.shape[0]
    if n < 2:
        raise ValueError("Recall@k needs at least 2 samples (a query and one neighbour)")
    e = F.normalize(e, dim=1)  # cosine similarity = dot product of unit vectors
    kmax = min(max(ks), n - 1)
    hits = {k: 0 for k in ks}
    # queries in chunks: the full N x N similarity matrix (400 MB for CIFAR's 10k test images) is never held
    for s in range(0, n, chunk):
        sim = e[s:s + chunk] @ e.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + s] = -math.inf  # exclude the query itself
        nn_idx = sim.topk(kmax, dim=1).indices                      # (chunk, kmax), most similar first
        match = (y[nn_idx] == y[s:s + chunk, None]).cumsum(1) > 0   # hit within the first j+1 neighbours
        for k in ks:
            hits[k] += int(match[:, min(k, n - 1) - 1].sum())
    return {k: hits[k] / n for k in ks}


def intra_class_stats(x, labels) -> dict[str, float]:
    """Intra-class variation of vectors `x` (N, D): predictive distributions or L2-normalized embeddings.

    CS-KD claims to reduce intra-class variation (Yun et al. 2020); with C the classes having >= 2 samples,
    n_c the size of class c, mu_c its mean vector and u_i = x_i / ||x_i||:

    - `variance`: (1/|C|) sum_c (1/n_c) sum_{i in c} ||x_i - mu_c||^2, the mean over classes of the mean squared
      Euclidean distance to the class mean (the trace of the biased class covariance). For unit vectors it
      equals 1 - ||mu_c||^2 averaged over classes, so it lies in [0, 1]; for probabilities in [0, 1) as well.
    - `cos_dist`: (1/|C|) sum_c mean_{i<j in c} (1 - u_i . u_j), the mean pairwise cosine distance within class.
    - `intra_dist`: (1/|C|) sum_c (1/n_c) sum_{i in c} ||x_i - mu_c||, the mean distance to the own class mean.
    - `inter_dist`: mean of ||mu_a - mu_b|| over all pairs a < b of classes present (any size).
    - `ratio`: intra_dist / inter_dist; lower means tighter, better separated classes.
    - `n_classes`: |C|.
    Measures that are undefined (no class with 2 samples, fewer than 2 classes) are NaN.
    """
    v = as_tensor(x, torch.float64)  # float64: variances of near-one-hot probabilities are tiny differences
    y = as_tensor(labels, torch.long)
    _check_xy(v, y, "vectors")
    u = F.normalize(v, dim=1)
    var, cos, intra, means = [], [], [], []
    for c in torch.unique(y):
        xc = v[y == c]
        mu = xc.mean(0)
        means.append(mu)
        n = xc.shape[0]
        if n < 2:
            continue  # a singleton class has zero spread by construction: it would bias every measure down
        d = (xc - mu).norm(dim=1)
        var.append(float(d.pow(2).mean()))
        intra.append(float(d.mean()))
        # mean over pairs i<j of u_i.u_j = (||sum u||^2 - n) / (n(n-1)): O(n D) instead of an n x n matrix
        s = u[y == c].sum(0)
        cos.append(1.0 - float((s @ s - n) / (n * (n - 1))))
    nan = float("nan")
    mean = lambda a: float(np.mean(a)) if a else nan  # noqa: E731
    if len(means) >= 2:
        m = torch.stack(means)
        inter = float(torch.pdist(m).mean())
    else:
        inter = nan
    intra_d = mean(intra)
    ratio = intra_d / inter if inter > 0 else nan  # also NaN when either side is NaN
    return {"variance": mean(var), "cos_dist": mean(cos), "intra_dist": intra_d, "inter_dist": inter,
            "ratio": ratio, "n_classes": len(var)}


def overconfidence(logits, labels, threshold: float = OVERCONFIDENCE_THRESHOLD) -> dict[str, Any]:
    """Over-confident errors: wrong top-1 predictions whose softmax confidence exceeds `threshold` (0.9).

    CS-KD is said to mitigate over-confident predictions (Yun et al. 2020). Returns counts and rates:
    `n`, `n_errors`, `error_rate`, `n_overconfident` (wrong and confidence > threshold),
    `overconfident_rate` (over all N samples), `overconfident_frac_of_errors` (over the errors; NaN without
    errors), the mean confidence of correct and of wrong predictions (NaN when there are none) and `threshold`.
    The prediction is the argmax of the logits; the confidence its softmax probability.
    """
    z = as_tensor(logits, torch.float64)
    y = as_tensor(labels, torch.long)
    _check_xy(z, y, "logits")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"expected a threshold in [0, 1), got {threshold}")
    p = z.softmax(1)
    conf, pred = p.max(1)
    wrong = pred != y
    over = wrong & (conf > threshold)
    n, n_err, n_over = len(y), int(wrong.sum()), int(over.sum())
    nan = float("nan")
    return {"n": n, "n_errors": n_err, "error_rate": n_err / n, "n_overconfident": n_over,
            "overconfident_rate": n_over / n, "overconfident_frac_of_errors": n_over / n_err if n_err else nan,
            "mean_conf_correct": float(conf[~wrong].mean()) if n_err < n else nan,
            "mean_conf_wrong": float(conf[wrong].mean()) if n_err else nan, "threshold": float(threshold)}
