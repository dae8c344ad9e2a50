"""Test-set analyses behind the CS-KD paper's claims (Yun et al., CVPR 2020): embeddings, intra-class variation,
over-confidence.

The paper argues that distilling predictive distributions between samples of the same class "mitigates
overconfident predictions and reduces intra-class variations"; it backs this with Recall@1 of penultimate-layer
features, t-SNE plots of those features and histograms of the log-probability of the predicted class. This module
measures the same things on any finished run directory (see `rundir`), so CE and CS-KD runs can be compared:

    >>> analyze_runs(["runs/ce", "runs/cskd"], "analysis")      # -> analysis/report.md
    analysis/<label>/{analysis.json, confidence.png, tsne.png}, analysis/embeddings.png, analysis/report.md

Pure functions (`recall_at_k`, `intra_class_stats`, `overconfidence`) work on tensors or arrays and are unit-tested
against hand computations; `embed` runs a learner over items; `analyze_run(s)` tie it all to run directories.
Matplotlib and scikit-learn are imported lazily so that importing this module (e.g. from the CLI) stays cheap.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["recall_at_k", "intra_class_stats", "overconfidence", "embed", "analyze_run", "analyze_runs",
           "RECALL_KS", "OVERCONFIDENCE_THRESHOLD"]

RECALL_KS: tuple[int, ...] = (1, 2, 4, 8)
OVERCONFIDENCE_THRESHOLD = 0.9
TSNE_MAX_CLASSES, TSNE_PER_CLASS = 10, 50
ANALYSIS_JSON, CONFIDENCE_PNG, TSNE_PNG, EMBEDDINGS_PNG, REPORT_MD = (
    "analysis.json", "confidence.png", "tsne.png", "embeddings.png", "report.md")


# ----------------------------------------------------------------------------------------------------------
# pure measures


def _as_tensor(x, dtype=torch.float32) -> Tensor:
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
    e = _as_tensor(emb)
    y = _as_tensor(labels, torch.long)
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
    v = _as_tensor(x, torch.float64)  # float64: variances of near-one-hot probabilities are tiny differences
    y = _as_tensor(labels, torch.long)
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
    z = _as_tensor(logits, torch.float64)
    y = _as_tensor(labels, torch.long)
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


# ----------------------------------------------------------------------------------------------------------
# embeddings of a learner


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DataParallel / DDP
        model = model.module
    return model


def _embedding_module(model: nn.Module) -> nn.Linear:
    """The classifier `nn.Linear` whose *input* is the pooled penultimate embedding.

    Paper models and torchvision ResNet/DenseNet: `models.classifier_of`. fastai `vision_learner` models are
    `Sequential(body, head)` whose head ends with the classifier Linear: the last `nn.Linear` of the model.
    """
    from .models import HEAD_ATTRS, classifier_of
    model = _unwrap(model)
    # a known family keeps its head under a known attribute; anything else (vision_learner's Sequential, timm
    # heads inside a wrapper) has the classifier as its last registered Linear, which is `classifier_of`'s fallback
    if any(isinstance(getattr(model, a, None), nn.Linear) for a in HEAD_ATTRS):
        return classifier_of(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(model).__name__} has no nn.Linear layer whose input could serve as embedding")
    return linears[-1]


def embed(learn, items: Sequence, bs: int = 64) -> tuple[Tensor, Tensor]:
    """(embeddings (N, D), logits (N, C)), float32 on CPU, of `items` through `learn`'s model in eval mode.

    Items go through the learner's own validation pipeline (`learn.dls.test_dl`), batch by batch, so only the
    embeddings and logits of the whole set are ever held in memory. Embeddings are the input of the classifier
    Linear (pooled penultimate features), read with a forward hook.
    """
    if len(items) == 0:
        raise ValueError("embed needs at least one item")
    model = learn.model
    head = _embedding_module(model)
    dl = learn.dls.test_dl(items, with_labels=False, bs=bs, shuffle=False, drop_last=False)
    try: device = next(model.parameters()).device
    except StopIteration: device = torch.device("cpu")
    feats: list[Tensor] = []
    logits: list[Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().flatten(1).float().cpu()))
    was_training = model.training
    model.eval()  # BatchNorm running statistics, no dropout: the embedding the exported model really computes
    try:
        with torch.no_grad():
            for b in dl:
                xb = b[0] if isinstance(b, (tuple, list)) else b
                out = model(xb.to(device))
                if isinstance(out, (tuple, list)): out = out[0]
                logits.append(out.detach().float().cpu())
    finally:
        hook.remove()
        model.train(was_training)
    if len(feats) != len(logits):
        raise RuntimeError(f"the classifier {type(head).__name__} ran {len(feats)} times for {len(logits)} batches; "
                           "is it used more than once in forward?")
    emb, z = torch.cat(feats), torch.cat(logits)
    if len(emb) != len(items):
        raise RuntimeError(f"embedded {len(emb)} of {len(items)} items; does the test pipeline drop items?")
    return emb, z


# ----------------------------------------------------------------------------------------------------------
# figures


def _figure(w: float, h: float):
    from matplotlib.figure import Figure  # pyplot-free: works under any backend, never opens a window
    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def confidence_figure(logits: Tensor, labels: Tensor, title: str = "", threshold: float = OVERCONFIDENCE_THRESHOLD):
    "Histogram of log p(predicted class), correct vs wrong predictions (the paper's over-confidence plot)."
    logp = _as_tensor(logits, torch.float64).log_softmax(1)
    top, pred = logp.max(1)
    ok = (pred == _as_tensor(labels, torch.long)).numpy()
    top = top.numpy()
    # max softmax >= 1/C, so log p(pred) always lies in [-log C, 0]: fixed bins make runs comparable
    lo = -math.log(max(logp.shape[1], 2))
    bins = np.linspace(lo, 0.0, 31)
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot()
    ax.hist(top[ok], bins=bins, alpha=0.6, color="tab:green", label=f"correct ({int(ok.sum())})")
    ax.hist(top[~ok], bins=bins, alpha=0.6, color="tab:red", label=f"wrong ({int((~ok).sum())})")
    ax.axvline(math.log(threshold), color="k", ls="--", lw=1, label=f"p = {threshold:g}")
    ax.set_yscale("log")   # the few wrong, confident predictions stay visible next to the many right ones
    ax.set_xlabel("log-probability of the predicted class")
    ax.set_ylabel("test samples (log scale)")
    ax.set_title(title or "confidence of predictions")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def _tsne_subset(labels: np.ndarray, max_classes: int = TSNE_MAX_CLASSES, per_class: int = TSNE_PER_CLASS,
                 seed: int = 0) -> np.ndarray:
    "Indices of up to `per_class` samples (seeded draw) of each of the first `max_classes` class indices."
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(labels)[:max_classes]:
        members = np.flatnonzero(labels == c)
        if len(members) > per_class: members = np.sort(rng.choice(members, per_class, replace=False))
        idx.append(members)
    return np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)


def tsne_2d(emb, labels, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    "2-D t-SNE (scikit-learn) of L2-normalized embeddings of the `_tsne_subset`; returns (xy (n, 2), labels (n,))."
    y = _as_tensor(labels, torch.long).numpy()
    idx = _tsne_subset(y, seed=seed)
    x = F.normalize(_as_tensor(emb), dim=1).numpy()[idx]  # unit vectors: Euclidean t-SNE ~ cosine geometry
    if len(idx) < 3:
        return np.zeros((len(idx), 2), np.float32), y[idx]
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    # sklearn needs perplexity < n; ~n/3 keeps tiny test sets meaningful, 30 is the usual value otherwise
    perp = float(min(30.0, max(1.0, (len(idx) - 1) / 3)))
    # <= 500 points: one OpenMP thread is plenty, and on a busy machine the threads' spin-waits made
    # Barnes-Hut 100x slower (a minute for 12 points on 2 shared cores)
    with threadpool_limits(limits=1, user_api="openmp"):
        xy = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)
    return xy.astype(np.float32), y[idx]


def _scatter(ax, xy: np.ndarray, y: np.ndarray, classes: Sequence[str], title: str) -> None:
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    for c in np.unique(y):
        m = y == c
        name = classes[c] if c < len(classes) else str(c)
        ax.scatter(xy[m, 0], xy[m, 1], s=12, color=cmap(int(c) % 10), label=str(name), alpha=0.85)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([]); ax.set_yticks([])


def embeddings_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], classes: Sequence[str]):
    "t-SNE panels `(title, xy, labels)` side by side, one colour per class index (same colours in every panel)."
    fig = _figure(4.2 * len(panels) + 1.4, 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, xy, y) in zip(axes, panels):
        _scatter(ax, xy, y, classes, title)
    handles, names = axes[0].get_legend_handles_labels()
    if handles: fig.legend(handles, names, loc="outside right center", fontsize=8, title="class")
    return fig


# ----------------------------------------------------------------------------------------------------------
# run directories


def _clean(o):
    "JSON-safe copy: numpy scalars to Python, NaN/inf to None (strict JSON has no NaN)."
    if isinstance(o, dict): return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [_clean(v) for v in o]
    if isinstance(o, (np.generic,)): o = o.item()
    if isinstance(o, float) and not math.isfinite(o): return None
    return o


def _safe_name(label: str) -> str:
    return re.sub(r"[^\w.+-]+", "_", str(label)).strip("_") or "run"


def _test_split(run, data_root):
    "(classes, items, labels) of the run's test split; an unreachable data root is one line naming it and the fix."
    from .datasets import load_dataset
    cfg = run.recipe.get("dataset") or {}
    name = cfg.get("name")
    if not name:
        raise ValueError(f"run {run.path}: recipe.yaml has no dataset.name; cannot find its test set")
    root = data_root if data_root is not None else cfg.get("root")
    hint = "pass the folder that holds it with --data-root DIR (data_root=... in Python)"
    if root is not None and not Path(root).expanduser().exists():
        raise ValueError(f"run {run.path}: data root {root} of dataset {name!r} is unreachable; {hint}")
    try:
        ds = load_dataset(name, root)
    except (ValueError, OSError) as e:  # DatasetLayoutError is a ValueError with a one-line message
        msg = " ".join(str(e).split())
        raise ValueError(f"run {run.path}: cannot read dataset {name!r} at data root {root}: {msg}; {hint}") from None
    return list(ds.classes), ds.test.items, np.asarray(ds.test.labels, dtype=np.int64)


def _model_labels(labels: np.ndarray, classes: Sequence[str], vocab) -> np.ndarray:
    "Dataset label indices -> the model's output indices (they differ when the learner's vocab is ordered otherwise)."
    if vocab is None: return labels
    names = [str(v) for v in vocab]
    if len(classes) and all(str(c) in names for c in classes):
        lut = np.array([names.index(str(c)) for c in classes], dtype=np.int64)
        return lut[labels]
    return labels  # vocab of integer indices (or unrelated names): labels already are output indices


def _subsample(n: int, max_items: int | None) -> np.ndarray:
    "Evenly spaced indices: test sets are often sorted by class, so a prefix would keep only the first classes."
    if max_items is None or max_items >= n: return np.arange(n)
    if max_items < 2: raise ValueError(f"max_items must be >= 2, got {max_items}")
    return np.unique(np.linspace(0, n - 1, max_items).round().astype(np.int64))


def analyze_run(run_dir, out_dir, data_root=None, max_items: int | None = None, label: str | None = None,
                bs: int = 64, cpu: bool | None = None) -> dict:
    """Analyze one finished run on its test set; writes `<out_dir>/<label>/{analysis.json, confidence.png, tsne.png}`.

    The run's exported learner embeds the test images of `recipe.yaml`'s dataset (root from `data_root`, else
    `dataset.root`); `max_items` keeps an evenly spaced subset. Returns the analysis.json content plus `"dir"`
    (the output folder) and `"tsne"` ((xy, labels) arrays, not written to JSON) for `analyze_runs`' joint figure.
    """
    from .metrics.functional import classification_metrics
    from .rundir import load_logits, load_run, load_run_learner
    run = load_run(run_dir)
    label = label or run.label
    classes, items, labels = _test_split(run, data_root)
    keep = _subsample(len(items), max_items)
    items = [items[i] for i in keep]
    if cpu is None: cpu = not torch.cuda.is_available()
    learn = load_run_learner(run.path, cpu=cpu)
    vocab = getattr(learn.dls, "vocab", None)
    y = torch.as_tensor(_model_labels(labels[keep], classes, vocab))
    names = [str(v) for v in vocab] if vocab is not None else list(classes)
    emb, logits = embed(learn, items, bs=bs)
    del learn
    if logits.shape[1] <= int(y.max()):
        raise ValueError(f"run {run.path}: the model has {logits.shape[1]} outputs but the test set has label "
                         f"{int(y.max())}; is --data-root the dataset this run was trained on?")

    unit = F.normalize(emb, dim=1)
    res: dict[str, Any] = {
        "label": label, "run_dir": str(run.path), "dataset": run.recipe.get("dataset", {}).get("name"),
        "n_test": len(items), "n_classes": int(logits.shape[1]), "embedding_dim": int(emb.shape[1]),
        "metrics": classification_metrics(logits, y),
        "recall": {f"R@{k}": v for k, v in recall_at_k(unit, y, RECALL_KS).items()},
        "intra_class": {"probs": intra_class_stats(logits.softmax(1), y), "embeddings": intra_class_stats(unit, y)},
        "overconfidence": overconfidence(logits, y),
    }
    # the stored test logits (written at training time) must agree with ours, else the data root, the item order
    # or the preprocessing differ from the run's: report instead of silently analyzing another test set
    try:
        z0, y0, _ = load_logits(run.path, "test")
        if max_items is None and len(y0) == len(y):
            res["stored_logits"] = {"labels_match": bool(torch.equal(y0, y)),
                                    "max_abs_diff": float((z0 - logits).abs().max())}
    except (ValueError, RuntimeError, OSError):
        pass

    out = Path(out_dir) / _safe_name(label)
    out.mkdir(parents=True, exist_ok=True)
    confidence_figure(logits, y, title=f"{label}: confidence on test").savefig(out / CONFIDENCE_PNG)
    xy, ty = tsne_2d(emb, y)
    embeddings_figure([(f"{label} (R@1 {res['recall']['R@1']:.3f})", xy, ty)], names).savefig(out / TSNE_PNG)
    (out / ANALYSIS_JSON).write_text(json.dumps(_clean(res), indent=2) + "\n")
    return {**res, "dir": out, "tsne": (xy, ty), "classes": names}


def _unique_labels(labels: Sequence[str], paths: Sequence[Path]) -> list[str]:
    "Run labels as folder names, unique (two seeds of one method share a label: add the run folder's name)."
    out, seen = [], set()
    for lab, p in zip(labels, paths):
        cand = _safe_name(lab)
        if cand in seen: cand = _safe_name(f"{lab}-{p.name}")
        k = 2
        while cand in seen: cand, k = _safe_name(f"{lab}-{p.name}-{k}"), k + 1
        seen.add(cand); out.append(cand)
    return out


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)): return "n/a"
    # variances of well-trained nets are ~1e-4: fixed decimals would print them all as 0.0000
    return f"{v:.2e}" if 0 < abs(v) < 10 ** -(digits - 2) else f"{v:.{digits}f}"


# (header, getter, better): better is "max", "min" or None; the best value of a column is printed in bold
_COLUMNS = [
    ("top-1 err", lambda r: r["metrics"]["top1_err"], "min"),
    *[(f"R@{k}", (lambda k: lambda r: r["recall"][f"R@{k}"])(k), "max") for k in RECALL_KS],
    ("var(p)", lambda r: r["intra_class"]["probs"]["variance"], "min"),
    ("var(emb)", lambda r: r["intra_class"]["embeddings"]["variance"], "min"),
    ("cos dist(emb)", lambda r: r["intra_class"]["embeddings"]["cos_dist"], "min"),
    ("intra/inter(emb)", lambda r: r["intra_class"]["embeddings"]["ratio"], "min"),
    ("ECE", lambda r: r["metrics"]["ece"], "min"),
    ("overconf err / all", lambda r: r["overconfidence"]["overconfident_rate"], "min"),
    ("overconf err / errors", lambda r: r["overconfidence"]["overconfident_frac_of_errors"], "min"),
]


def _report(results: list[dict], out: Path) -> str:
    lines = ["# CS-KD analyses", "",
             "Test-set analyses of the claims of Yun et al. (CVPR 2020): CS-KD should raise Recall@k of the "
             "penultimate embeddings, lower intra-class variation and produce fewer over-confident errors "
             "than cross-entropy training.", "",
             "| run | n test | " + " | ".join(h for h, _, _ in _COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(_COLUMNS)]
    vals = [[get(r) for _, get, _ in _COLUMNS] for r in results]
    best = []
    for j, (_, _, better) in enumerate(_COLUMNS):
        col = [v[j] for v in vals if v[j] is not None and math.isfinite(v[j])]
        best.append(None if len(results) < 2 or not col or better is None else (max if better == "max" else min)(col))
    for r, v in zip(results, vals):
        cells = [(f"**{_fmt(x)}**" if b is not None and x == b else _fmt(x)) for x, b in zip(v, best)]
        lines.append(f"| {r['label']} | {r['n_test']} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: best value of a column (higher R@k, lower everything else).", "",
              "## Definitions", "",
              "- **R@k**: fraction of test images with a same-class image among their k cosine nearest neighbours "
              "(penultimate-layer embeddings, the image itself excluded).",
              "- **var(p)**, **var(emb)**: mean over classes of the mean squared distance to the class mean, of the "
              "softmax distributions and of the L2-normalized embeddings.",
              "- **cos dist(emb)**: mean over classes of the mean pairwise cosine distance (1 - cos) within the class.",
              "- **intra/inter(emb)**: mean distance to the own class mean over the mean distance between class "
              "means (normalized embeddings).",
              f"- **overconf err**: wrong predictions with confidence > {OVERCONFIDENCE_THRESHOLD:g}, as a fraction "
              "of all test images and of the errors.", "",
              "## Figures", ""]
    if (out / EMBEDDINGS_PNG).exists():
        lines += [f"![t-SNE of test embeddings]({EMBEDDINGS_PNG})", ""]
    for r in results:
        rel = Path(r["dir"]).relative_to(out).as_posix()
        lines += [f"### {r['label']}", "", f"`{r['run_dir']}`", "",
                  f"![confidence]({rel}/{CONFIDENCE_PNG}) ![t-SNE]({rel}/{TSNE_PNG})", ""]
    return "\n".join(lines)


def analyze_runs(run_dirs: Iterable, out_dir, data_root=None, max_items: int | None = None, bs: int = 64,
                 cpu: bool | None = None) -> Path:
    """Analyze every run (`analyze_run`), draw their t-SNEs side by side in `<out_dir>/embeddings.png` and write
    the comparison table `<out_dir>/report.md` (one row per run); returns the report's path."""
    from .rundir import load_run
    paths = [Path(p) for p in run_dirs]
    if not paths: raise ValueError("analyze_runs needs at least one run directory")
    out = Path(out_dir); out.mkdir(parents=True, exist_ok=True)
    labels = _unique_labels([load_run(p).label for p in paths], paths)
    results = [analyze_run(p, out, data_root=data_root, max_items=max_items, label=lab, bs=bs, cpu=cpu)
               for p, lab in zip(paths, labels)]
    panels = [(f"{r['label']} (R@1 {r['recall']['R@1']:.3f})", *r["tsne"]) for r in results]
    embeddings_figure(panels, results[0]["classes"]).savefig(out / EMBEDDINGS_PNG)
    report = out / REPORT_MD
    report.write_text(_report(results, out) + "\n")
    return report


def summary_table(report: Path) -> str:
    "The comparison table of a report.md (its header, separator and one row per run), for printing."
    lines = Path(report).read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("| run |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])
