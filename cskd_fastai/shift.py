"""`eval --shift`: accuracy and calibration under the 15 ImageNet-C corruptions (issue #39, part 3).

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019;
calibration under such shift: Ovadia et al., NeurIPS 2019. The corruptions are `imagecorruptions-imaug`'s (the
maintained fork of `imagecorruptions`), applied to each test image's centre square at the side the run's test
transform reads (`cache.cache_side`), so a corruption's scale matches what the model sees (squares under 32 px,
which the package refuses, are corrupted at 32 px and scaled back). Each corrupted image is
deterministic (numpy seeded by image index, corruption and severity) and the corrupted arrays are cached on disk per
(corruption, severity), so a second model on the same images reuses them. Glass blur is the slow one (numba; the
first call compiles), which is why a subsample (`n_max`, seeded) is the default.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .metrics import classification_metrics

__all__ = ["CORRUPTIONS", "corrupted_set", "shift_report", "relative_errors", "default_cache_dir", "parse_severities"]

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
MIN_SIDE = 32   # the package refuses smaller images: smaller squares are corrupted at 32 px and scaled back


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cskd-fastai" / "shift"


def parse_severities(text: str) -> list[int]:
    "'1-5', '1,3,5' or '3' -> sorted severities in 1..5; one ValueError line otherwise."
    try:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        out = set()
        for p in parts:
            a, _, b = p.partition("-")
            out.update(range(int(a), int(b or a) + 1))
    except ValueError: out = set()
    if not out or not out <= {1, 2, 3, 4, 5}:
        raise ValueError(f"--shift {text!r}: expected severities between 1 and 5, e.g. 1-5 or 1,3,5")
    return sorted(out)


def _square(item, side: int) -> np.ndarray:
    "The item decoded (RGB), its shorter side resized to `side`, centre square cut: uint8 [side, side, 3]."
    from PIL import Image
    from .images import safe_image
    im = safe_image(item)
    w, h = im.size
    s = side / min(w, h)
    im = im.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BILINEAR)
    w, h = im.size
    l, t = (w - side) // 2, (h - side) // 2
    return np.asarray(im.crop((l, t, l + side, t + side)), dtype=np.uint8)


def corrupted_set(items: Sequence, side: int, name: str, severity: int, cache_dir: Optional[Path] = None,
                  clean: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 [N, side, side, 3]: `items`' centre squares under corruption `name` at `severity` (0 = clean), read from
    or written to `cache_dir` (keyed by the items, the side, the corruption and the severity)."""
    key = hashlib.sha256(("\n".join(map(str, items)) + f"|{side}").encode()).hexdigest()[:16]
    f = None if cache_dir is None else Path(cache_dir) / f"{key}-{name}-{severity}.npy"
    if f is not None and f.exists(): return np.load(f, allow_pickle=False)
    base = clean if clean is not None else np.stack([_square(it, side) for it in items])
    if severity == 0: out = base
    else:
        try: from imagecorruptions import corrupt
        except ImportError: raise ValueError("--shift needs the corruptions package: pip install 'cskd-fastai[shift]' "
                                             "(imagecorruptions-imaug)") from None
        from PIL import Image
        out = np.empty_like(base)
        work = max(side, MIN_SIDE)
        for i, x in enumerate(base):
            if work != side: x = np.asarray(Image.fromarray(x).resize((work, work), Image.BILINEAR))
            np.random.seed(zlib.crc32(f"{i}|{name}|{severity}".encode()))   # the package draws from numpy's global RNG
            y = np.clip(np.asarray(corrupt(x, corruption_name=name, severity=severity)), 0, 255).astype(np.uint8)
            if work != side: y = np.asarray(Image.fromarray(y[:work, :work]).resize((side, side), Image.BILINEAR))
            out[i] = y[:side, :side]
    if f is not None:
        from .safeio import save_atomic
        f.parent.mkdir(parents=True, exist_ok=True)
        def write(tmp):   # through a handle: np.save given a path would append ".npy" to save_atomic's temp name
            with open(tmp, "wb") as fh: np.save(fh, out)
        save_atomic(write, f)
    return out


def _scores(z: torch.Tensor, y: torch.Tensor, T: float) -> dict:
    m, mt = classification_metrics(z, y), classification_metrics(z / T, y)
    return dict(top1_err=m["top1_err"], ece=m["ece"], nll=m["nll"], ece_ts=mt["ece"], nll_ts=mt["nll"])


def shift_report(predict: Callable[[list], torch.Tensor], items: Sequence, labels: torch.Tensor, side: int, T: float,
                 severities: Sequence[int] = (1, 2, 3, 4, 5), corruptions: Sequence[str] = CORRUPTIONS,
                 cache_dir: Optional[Path] = None, progress: bool = False, logits_out: Optional[dict] = None) -> dict:
    """Top-1 error, ECE and NLL (at T = 1, and `_ts` at the run's T) on the clean centre squares and under every
    corruption × severity, with their means per corruption, per severity and overall. `predict` maps a list of
    uint8 arrays to logits; given a dict, `logits_out` receives them ('clean', 'corruption/severity')."""
    clean = corrupted_set(items, side, "clean", 0, cache_dir)
    z = predict(list(clean))
    if logits_out is not None: logits_out["clean"] = z
    out = {"clean": _scores(z, labels, T), "T": T, "n_images": len(items), "corruptions": {}}
    jobs = [(c, s) for c in corruptions for s in severities]
    it = jobs
    if progress:
        from fastprogress.fastprogress import progress_bar
        it = progress_bar(jobs, leave=False)
    for c, s in it:
        x = corrupted_set(items, side, c, s, cache_dir, clean=clean)
        z = predict(list(x))
        if logits_out is not None: logits_out[f"{c}/{s}"] = z
        out["corruptions"].setdefault(c, {})[str(s)] = _scores(z, labels, T)
    keys = list(out["clean"])
    cells = [v for per in out["corruptions"].values() for v in per.values()]
    out["mean"] = {k: float(np.mean([v[k] for v in cells])) for k in keys}
    out["mean_by_severity"] = {str(s): {k: float(np.mean([out["corruptions"][c][str(s)][k] for c in corruptions]))
                                        for k in keys} for s in severities}
    return out


def relative_errors(report: dict, reference: dict) -> dict:
    """mCE-style: per corruption, the sum over severities of this run's top-1 error over the reference run's (a CE
    run evaluated on the same images and severities), and their mean (`mCE`); 1 = as robust as the reference."""
    ce = {}
    for c, per in report["corruptions"].items():
        ref = reference.get("corruptions", {}).get(c)
        if not ref or set(ref) != set(per):
            raise ValueError(f"the reference report lacks {c} at severities {sorted(per)}: evaluate both runs with "
                             f"the same --shift severities")
        ce[c] = sum(v["top1_err"] for v in per.values()) / max(sum(v["top1_err"] for v in ref.values()), 1e-12)
    return {"per_corruption": ce, "mCE": float(np.mean(list(ce.values())))}
