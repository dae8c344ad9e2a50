"""What decides a run's result, recorded in its checkpoint so that `--resume` can refuse to continue it under
another recipe or on another split: the resolved recipe's keys (less those that cannot change the result) and a
SHA-256 of the sorted train/valid item lists with their labels."""
from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["RESULT_NEUTRAL_KEYS", "recipe_keys", "split_fingerprint", "run_fingerprint", "fingerprint_changes",
           "ResumeMismatch"]

# Keys that may differ on --resume: where the data lives (the split's fingerprint covers what it holds), how many
# loader processes and how often memory is trimmed, the free text, and the run's label (its folder, not its result).
RESULT_NEUTRAL_KEYS = frozenset({"description", "dataset.root", "train.workers", "train.malloc_trim_every",
                                 "method.label"})


class ResumeMismatch(ValueError):
    "A --resume whose recipe or split differs from the checkpoint's: one line naming the keys and both values."


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict): out.update(_flat(v, key + "."))
        else: out[key] = v
    return out


def recipe_keys(recipe) -> dict:
    "The single-run recipe as flat `section.key: value` pairs (`method.lam`, `seed`), result-neutral keys left out."
    d = recipe.model_dump(mode="json")
    (method,), (seed,) = d.pop("methods"), d.pop("seeds")
    flat = _flat(d) | _flat(method, "method.") | {"seed": seed}
    # `eval` (trust evaluations after training) cannot change the trained model either
    return {k: v for k, v in flat.items() if k not in RESULT_NEUTRAL_KEYS and k.split(".")[0] != "eval"}


def _item_key(item, root) -> str:
    "A path relative to the data root (so a moved copy of the data still matches), or the digest of an array's bytes."
    if isinstance(item, (str, Path)):
        p = Path(item)
        try: return p.resolve().relative_to(Path(root).resolve()).as_posix() if root else p.as_posix()
        except ValueError: return p.as_posix()
    import numpy as np
    return hashlib.sha1(np.ascontiguousarray(item).tobytes()).hexdigest()


def split_fingerprint(items, labels, train_idx, valid_idx, root=None) -> str:
    "SHA-256 of the sorted (item, label) lists of the train and valid splits."
    h = hashlib.sha256()
    for name, idx in (("train", train_idx), ("valid", valid_idx)):
        h.update(name.encode())
        for k in sorted(f"{_item_key(items[i], root)}\t{int(labels[i])}" for i in idx): h.update(k.encode() + b"\n")
    return h.hexdigest()


def run_fingerprint(recipe, data) -> dict:
    "The recipe keys and the split fingerprint of one run of `recipe` on `data` (an `ImageDataset`)."
    from .pipeline import stratified_split
    tr, va = stratified_split(data.train.labels, recipe.dataset.valid_pct, recipe.seed)
    return dict(recipe=recipe_keys(recipe),
                split=split_fingerprint(data.train.items, data.train.labels, tr, va, recipe.dataset.root))


def fingerprint_changes(saved: dict, now: dict) -> list[str]:
    """`key: saved -> now` for every recipe key that differs (and the split, if its fingerprint does); [] if none.
    A key only one side has (a recipe field added or dropped by an upgrade between the two) is not compared."""
    a, b = saved.get("recipe", {}), now.get("recipe", {})
    out = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(set(a) & set(b))
           if k not in RESULT_NEUTRAL_KEYS and a[k] != b[k]]
    if saved.get("split") and now.get("split") and saved["split"] != now["split"]:
        out.append("the train/valid split (other images, labels or valid_pct)")
    return out
