"""Penultimate-layer embeddings of a learner (the input of its classifier) and their t-SNE, for the analyses."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import unwrap
from .metrics.representation import as_tensor

__all__ = ["embed", "tsne_2d", "embeddings_figure", "TSNE_MAX_CLASSES", "TSNE_PER_CLASS"]

TSNE_MAX_CLASSES, TSNE_PER_CLASS = 10, 50


def new_figure(w: float, h: float):
    "A pyplot-free matplotlib Figure (no global state, any backend)."
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), dpi=110, layout="constrained")



def _embedding_module(model: nn.Module) -> nn.Linear:
    """The classifier `nn.Linear` whose *input* is the pooled penultimate embedding.

    Paper models and torchvision ResNet/DenseNet: `models.classifier_of`. fastai `vision_learner` models are
    `Sequential(body, head)` whose head ends with the classifier Linear: the last `nn.Linear` of the model.
    """
    from .models import HEAD_ATTRS, classifier_of
    model = unwrap(model)
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
    y = as_tensor(labels, torch.long).numpy()
    idx = _tsne_subset(y, seed=seed)
    x = F.normalize(as_tensor(emb), dim=1).numpy()[idx]  # unit vectors: Euclidean t-SNE ~ cosine geometry
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
    fig = new_figure(4.2 * len(panels) + 1.4, 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, xy, y) in zip(axes, panels):
        _scatter(ax, xy, y, classes, title)
    handles, names = axes[0].get_legend_handles_labels()
    if handles: fig.legend(handles, names, loc="outside right center", fontsize=8, title="class")
    return fig
