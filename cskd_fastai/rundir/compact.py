"""The archived form of a run's logits, `logits.npz`: under half of `logits.pt`'s size (float16, compressed), with every
top-k error exactly the original's, NLL and Brier within 1e-5, and the fitted temperature within 1e-4. ECE can move
by up to ~1e-3 (measured max 7e-4 over 132 archived runs): a confidence a float16 step from a bin edge changes bin.
Coarser tails were measured and rejected (docs/performance.md, "Archived evidence"): 4 mantissa bits below e^-6 of
the top class saved another 22% and moved ECE by 2e-3 after temperature scaling.

Per split `s` (numpy arrays only, read with `allow_pickle=False`: loading runs no code):
  `s_rowmax`  float32 [N]     each row's largest logit, exact
  `s_delta`   float16 [N, C]  logit minus its row's largest (≤ 0; the largest classes, which decide every metric, get
                              float16's finest steps), rounded to nearest except where that would tie or cross the
                              true class (then away from it), so every top-k error is exactly the original's
  `s_label`   float32 [N]     the true class's delta in float32, so NLL (the metric most sensitive to far classes) is
                              as good as exact
  `s_labels`  int32   [N]
and `classes` (strings). The row maxima keep raw-logit scores (max-logit, energy) exact up to the deltas' rounding.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..safeio import save_atomic

__all__ = ["COMPACT_LOGITS", "COMPACT_TOL", "encode_logits", "decode_logits", "save_compact", "load_compact",
           "save_trust_logits", "load_trust_logits"]

COMPACT_LOGITS = "logits.npz"
# How far a metric of the decoded logits may sit from the float32 original's (checked when a run is archived, and by
# `compare` against metrics.json): top-k errors exactly, binned ECEs by a bin-edge crossing or two, the rest closely
COMPACT_TOL = {"top1_err": 0.0, "top5_err": 0.0, "ece": 2e-3, "ece_adaptive": 2e-3, "ece_classwise": 2e-3}
DEFAULT_TOL = 1e-4


def encode_logits(logits: np.ndarray, labels: np.ndarray, split: str) -> dict:
    """The arrays `logits.npz` keeps for one split. Deltas are rounded to the nearest float16 (unbiased: sums over
    classes keep their value); a class whose decoded logit would then tie or cross the true class's is moved one
    float16 step at a time away from it until it does not, so the true class's rank, hence every top-k error, is
    exactly the original's."""
    z = np.asarray(logits, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64)
    rows = np.arange(len(y))
    top = z.max(axis=1)
    delta = np.maximum(z - top[:, None], np.float32(-60000.0))   # ≤ 0 and inside float16's range
    label = delta[rows, y]
    h = delta.astype(np.float16)
    above, below = z > z[rows, y][:, None], z < z[rows, y][:, None]
    for _ in range(64):   # a step or two is the most real logits need
        back = _decode(h, label, top, y)
        true = back[rows, y][:, None]
        bad = (above & (back <= true)) | (below & (back >= true))
        if not bad.any(): break
        h = np.where(bad, np.nextafter(h, np.where(above, np.float16(np.inf), np.float16(-np.inf))), h)
    return {f"{split}_rowmax": top, f"{split}_delta": h, f"{split}_label": label.astype(np.float32),
            f"{split}_labels": y.astype(np.int32)}


def _decode(delta16, label, rowmax, y) -> np.ndarray:
    delta = np.asarray(delta16).astype(np.float32)
    delta[np.arange(len(y)), y] = label
    return delta + np.asarray(rowmax, dtype=np.float32)[:, None]


def decode_logits(arrays, split: str) -> tuple[np.ndarray, np.ndarray]:
    "(logits float32 [N, C], labels int64 [N]) of one split from `encode_logits`' arrays."
    y = np.asarray(arrays[f"{split}_labels"]).astype(np.int64)
    return _decode(arrays[f"{split}_delta"], arrays[f"{split}_label"], arrays[f"{split}_rowmax"], y), y


def _numpy(x) -> np.ndarray:
    "A tensor (any device; a float one as float32, so bfloat16 converts) or an array-like, as a numpy array."
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _write_npz(path, arrays: dict) -> Path:
    "`np.savez_compressed` of `arrays`, written atomically (a partial file never replaces a whole one)."
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    save_atomic(lambda t: Path(t).write_bytes(buf.getvalue()), Path(path))
    return Path(path)


def save_compact(run_dir, splits: dict, classes) -> Path:
    "Write `logits.npz` atomically; `splits` maps 'valid'/'test' to (logits, labels) as numpy arrays or tensors."
    arrays = {"classes": np.array([str(c) for c in classes], dtype=str)}
    for name, (z, y) in splits.items(): arrays.update(encode_logits(_numpy(z), _numpy(y), name))
    return _write_npz(Path(run_dir) / COMPACT_LOGITS, arrays)


def load_compact(f) -> dict:
    "{'valid'/'test': (logits, labels), 'classes': [...]} from a `logits.npz` (ValueError/OSError when unreadable)."
    with np.load(f, allow_pickle=False) as d:
        splits = sorted({k.rsplit("_", 1)[0] for k in d.files if k.endswith("_rowmax")})
        out = {s: decode_logits(d, s) for s in splits}
        out["classes"] = [str(c) for c in d["classes"]] if "classes" in d.files else []
    return out


def save_trust_logits(path, ood: dict, shift: dict, shift_labels) -> Path:
    """Write the trust evaluations' logits to `path` (trust_logits.npz) atomically, in `encode_logits`' form.
    `ood` maps a source (as trust.json names it) to its logits; `shift` maps a condition ('clean' or
    'corruption/severity') to the logits of the same drawn test images, whose labels are `shift_labels`. An OOD image
    has no label: its row is encoded against its own top class (exact, like every row maximum), so the scores
    (max softmax, max logit, energy, entropy) are as good as `logits.npz`'s."""
    y = _numpy(shift_labels)
    arrays = {"ood_sources": np.array([str(s) for s in ood], dtype=str),
              "shift_conditions": np.array([str(c) for c in shift], dtype=str)}
    for i, z in enumerate(ood.values()):
        z = _numpy(z)
        arrays.update(encode_logits(z, z.argmax(axis=1) if len(z) else np.zeros(0, np.int64), f"ood{i}"))
    for i, z in enumerate(shift.values()): arrays.update(encode_logits(_numpy(z), y, f"shift{i}"))
    return _write_npz(path, arrays)


def load_trust_logits(path) -> dict:
    """{'ood': {source: logits}, 'shift': {condition: (logits, labels)}} from `save_trust_logits`' file
    (ValueError/OSError when unreadable; `allow_pickle=False`: loading runs no code)."""
    with np.load(path, allow_pickle=False) as d:
        return {"ood": {str(s): decode_logits(d, f"ood{i}")[0] for i, s in enumerate(d["ood_sources"])},
                "shift": {str(c): decode_logits(d, f"shift{i}") for i, c in enumerate(d["shift_conditions"])}}
