"""`eval --ood`: how well a run tells its own test images from images of none of its classes (issue #39, part 2).

The in-distribution side is the run's test split, the other side a folder of images or a registered dataset's test
split. Every score of `metrics.ood` is reported at T = 1 and at the temperature the run's validation split supports,
with AUROC, AUPR-in/out and FPR95, and the share of each side that `predict` and the demo would flag."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics.ood import SCORES, familiarity_flag, flagged, ood_metrics, ood_score

__all__ = ["ood_items", "ood_logits", "ood_report", "draw", "draw_index"]


def ood_items(source: str, data_root=None, n_max: int = 2000, seed: int = 0) -> tuple[list, str]:
    """(items, what they are) for `--ood SOURCE`: the images of a folder (searched recursively) or the test split of a
    registered dataset (`holdout`, the recipe's held-out classes, is `evaluate_run`'s), at most `n_max` of them (a seeded draw, so a rerun scores the same images)."""
    from .datasets import DATASETS, load_dataset
    from .predict import find_images
    p = Path(source)
    if p.is_dir():
        items, what = find_images([p]), f"folder {p}"
    elif p.exists() or source not in DATASETS:
        raise ValueError(f"--ood {source}: expected a folder of images or a dataset name "
                         f"({', '.join(sorted(DATASETS))})")
    else:
        items, what = list(load_dataset(source, data_root).test.items), f"{source} test split"
    if not items: raise ValueError(f"--ood {source}: no images found")
    return draw(items, what, n_max, seed)


def draw_index(n: int, n_max: int, seed: int = 0) -> np.ndarray:
    "Indices of at most `n_max` of `n` items, a seeded draw, in the items' order (all of them when n <= n_max)."
    if n <= n_max: return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, n_max, replace=False))


def draw(items: list, what: str, n_max: int = 2000, seed: int = 0) -> tuple[list, str]:
    "At most `n_max` of `items` (`draw_index`), and `what` saying so."
    if len(items) <= n_max: return items, what
    return [items[i] for i in draw_index(len(items), n_max, seed)], f"{what} ({n_max} of {len(items)}, seeded draw)"


def ood_logits(learn, items, bs: int = 64):
    """Logits of `items` (paths or arrays) through the run's test pipeline, each decoded as the demo decodes an
    upload (RGB; an unreadable file is skipped and counted)."""
    from .images import safe_image
    from .serving import predict_logits
    imgs, bad = [], 0
    for it in items:
        try: imgs.append(safe_image(it))
        except ValueError: bad += 1
    if not imgs: raise ValueError("--ood: none of the images could be read")
    return predict_logits(learn, imgs, bs=bs), bad


def ood_report(test_logits, valid_logits, T: float, out_logits) -> dict:
    """Per temperature ('T=1' and the fitted one) and score: AUROC, AUPR-in, AUPR-out, FPR95 of test vs OOD; and the
    run's flag rule with the share of test and OOD images it flags."""
    z_in, z_out = np.asarray(test_logits, dtype=np.float64), np.asarray(out_logits, dtype=np.float64)
    temps = {"T=1": 1.0} | ({f"T={T:.3g} (fitted on valid)": T} if T != 1 else {})
    out = {name: {s: ood_metrics(ood_score(z_in, s, t), ood_score(z_out, s, t)) for s in SCORES}
           for name, t in temps.items()}
    flag = familiarity_flag(np.asarray(valid_logits, dtype=np.float64), T)
    out["flag"] = dict(flag, test_flagged=float(flagged(z_in, flag).mean()), ood_flagged=float(flagged(z_out, flag).mean()))
    return out
