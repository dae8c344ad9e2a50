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
from torch import Tensor

__all__ = ["recall_at_k", "intra_class_stats", "overconfidence", "embed", "analyze_run", "analyze_runs",
           "RECALL_KS", "OVERCONFIDENCE_THRESHOLD", "summary_table"]

from .embeddings import embed, embeddings_figure, new_figure, tsne_2d  # noqa: E402,F401
from .metrics.representation import (OVERCONFIDENCE_THRESHOLD, RECALL_KS, as_tensor,  # noqa: E402,F401
                                     intra_class_stats, overconfidence, recall_at_k)
ANALYSIS_JSON, CONFIDENCE_PNG, TSNE_PNG, EMBEDDINGS_PNG, REPORT_MD = (
    "analysis.json", "confidence.png", "tsne.png", "embeddings.png", "report.md")


# ----------------------------------------------------------------------------------------------------------
# figures


def confidence_figure(logits: Tensor, labels: Tensor, title: str = "", threshold: float = OVERCONFIDENCE_THRESHOLD):
    "Histogram of log p(predicted class), correct vs wrong predictions (the paper's over-confidence plot)."
    logp = as_tensor(logits, torch.float64).log_softmax(1)
    top, pred = logp.max(1)
    ok = (pred == as_tensor(labels, torch.long)).numpy()
    top = top.numpy()
    # max softmax >= 1/C, so log p(pred) always lies in [-log C, 0]: fixed bins make runs comparable
    lo = -math.log(max(logp.shape[1], 2))
    bins = np.linspace(lo, 0.0, 31)
    fig = new_figure(5.5, 3.6)
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
    from .rebuild import rebuild_learner
    from .rundir import load_logits, load_run
    run = load_run(run_dir)
    label = label or run.label
    classes, items, labels = _test_split(run, data_root)
    keep = _subsample(len(items), max_items)
    items = [items[i] for i in keep]
    if cpu is None: cpu = not torch.cuda.is_available()
    learn = rebuild_learner(run.path, cpu=cpu)
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
