"""`cskd-fastai predict`: batch inference with a finished run, at its calibrated temperature.

    >>> rows = predict_files("runs/cub/cskd-lam3-T4/seed0", ["photos/"], k=5, temperature="fitted")
    >>> rows[0]["top"]            # [(class, probability), ...], most probable first

Images are decoded one by one with the demo's safe decoder (an unreadable file becomes an `error` in its row and
the batch goes on), then run through the learner's own validation pipeline in batches. The temperature is the
demo's: fitted on the run's validation logits where the validation data supports it, else 1
(`calibration.fit_temperature_checked`), or 1 (`none`), or a number.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

__all__ = ["find_images", "predict_files", "write_csv", "format_rows", "summary", "parse_temperature", "csv_cell", "T_RANGE"]

T_RANGE = (1e-3, 1e3)   # temperatures `predict` accepts: beyond them probabilities are all-or-nothing or NaN


def csv_cell(v) -> str:
    "A value a spreadsheet shows as text: a leading = + - @ (or tab / CR) would make it a formula, so it is quoted."
    s = str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def find_images(paths: Iterable) -> list[Path]:
    "Image files named, or found (recursively, sorted) inside named folders; a missing path is one `ValueError`."
    from .datasets.core import is_image
    out = []
    for p in map(Path, paths):
        if p.is_dir(): out += sorted(f for f in p.rglob("*") if f.is_file() and is_image(f.name))
        elif p.exists(): out.append(p)
        else: raise ValueError(f"{p} does not exist; pass image files or folders that hold them")
    if not out: raise ValueError(f"no image files (jpg, jpeg, png, bmp, webp) in {[str(p) for p in paths]}")
    return out


def parse_temperature(value: Union[str, float]) -> Union[str, float]:
    "'fitted', 'none' or a positive number."
    if isinstance(value, str) and value.lower() in ("fitted", "none"): return value.lower()
    try: t = float(value)
    except (TypeError, ValueError): t = float("nan")
    if not (math.isfinite(t) and T_RANGE[0] <= t <= T_RANGE[1]):   # outside it softmax(z / T) overflows to NaN
        raise ValueError(f"--temperature must be 'fitted', 'none' or a number in [{T_RANGE[0]:g}, {T_RANGE[1]:g}], "
                         f"got {value!r}")
    return t


def predict_files(run_dir, paths: Sequence, k: int = 5, temperature: Union[str, float] = "fitted", bs: int = 64,
                  progress: Optional[bool] = None, on_batch: Optional[Callable[[int, int], None]] = None,
                  coverage: Optional[float] = None, score: str = "lac", classwise: bool = False) -> list[dict]:
    """One row per image: `path`, `top` ([(class, prob)] at T, `k` of them), `T`, `error` (None, or why the file
    could not be used), and with `coverage` its conformal prediction set `set` ([(class, prob)], `sets.SetPredictor`:
    calibrated on the run's validation split at the same T). Images are listed with `find_images`."""
    import sys
    from .serving import load_model, predict_logits
    from .metrics.calibration import apply_temperature
    from .images import safe_image
    from .metrics.ood import flagged
    if isinstance(k, bool) or int(k) != k or k < 1: raise ValueError(f"--top-k must be a positive integer, got {k!r}")
    temperature = parse_temperature(temperature)
    if coverage is not None and not (isinstance(coverage, (int, float)) and 0 < coverage < 1):
        raise ValueError(f"--coverage must be a number strictly between 0 and 1 (e.g. 0.9), got {coverage!r}")
    files = find_images(paths)
    entry = load_model(run_dir, quiet_fit=temperature != "fitted")
    T = entry.temperature if temperature == "fitted" else 1.0 if temperature == "none" else float(temperature)
    sets = None
    if coverage is not None:
        from .sets import SetPredictor
        sets = SetPredictor(entry, coverage, score, classwise, T=T)   # a too small validation split: one line, now
    learn, k = entry.learn, min(int(k), len(entry.classes))
    # the run's unfamiliar-image rule (fixed on validation at its fitted T, whatever T the probabilities are shown at)
    flag = entry.familiarity()
    rows = [dict(path=str(f), top=[], T=T, error=None, unfamiliar=None) for f in files]
    chunks = [list(range(i, min(i + bs, len(files)))) for i in range(0, len(files), bs)]
    if progress is None: progress = sys.stdout.isatty()
    it = chunks
    if progress:
        from fastprogress.fastprogress import progress_bar
        it = progress_bar(chunks, leave=False)
    for n, idx in enumerate(it):
        imgs, ok = [], []
        for i in idx:
            try: imgs.append(safe_image(files[i])); ok.append(i)
            except ValueError as e: rows[i]["error"] = str(e)
        if imgs:
            logits = predict_logits(learn, imgs, bs=len(imgs))
            p, c = apply_temperature(logits, T).topk(k, dim=1)
            odd = flagged(logits.numpy(), flag) if flag else [None] * len(ok)
            for j, i in enumerate(ok):
                rows[i]["top"] = [(entry.classes[int(ci)], float(pi)) for pi, ci in zip(p[j], c[j])]
                rows[i]["unfamiliar"] = None if odd[j] is None else bool(odd[j])
            if sets is not None:
                for i, s in zip(ok, sets.sets(logits)): rows[i]["set"] = s
        if on_batch: on_batch(n + 1, len(chunks))
    return rows


def _set_text(s) -> str: return "; ".join(f"{c} ({100 * p:.1f}%)" for c, p in s) or "(empty)"


def format_rows(rows: list[dict]) -> str:
    "A Markdown table: path, top-k 'class (prob%)', T, and the prediction set when one was asked for."
    with_sets = any("set" in r for r in rows)
    lines = ["| image | prediction (probability at T) | T |" + (" prediction set |" if with_sets else ""),
             "|---|---|---|" + ("---|" if with_sets else "")]
    for r in rows:
        pred = r["error"] and f"unreadable: {r['error']}" or ", ".join(f"{c} ({100 * p:.1f}%)" for c, p in r["top"])
        if r.get("unfamiliar"): pred = f"⚠ unfamiliar: {pred}"
        extra = f" {_set_text(r['set']) if 'set' in r else ''} |" if with_sets else ""
        lines.append(f"| {r['path']} | {pred} | {r['T']:.3g} |{extra}")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    "The lines under `format_rows`' table: counts, the temperature, and what an unfamiliar flag means when one is up."
    from .metrics.ood import FLAG_MEANING
    bad, odd = sum(1 for r in rows if r["error"]), sum(1 for r in rows if r.get("unfamiliar"))
    text = (f"{len(rows) - bad} images predicted" + (f", {bad} unreadable (see their rows)" if bad else "")
            + f"; T = {rows[0]['T']:.3g}")
    return text + (f"\n{odd} flagged ⚠ {FLAG_MEANING}" if odd else "")


def write_csv(rows: list[dict], path) -> None:
    """One row per image: path, class_1, prob_1, ..., class_k, prob_k, temperature, error, unfamiliar (1/0: the run's
    flag, `metrics.ood.FLAG_MEANING`; empty for an unreadable file), and with prediction sets
    `set_size` and `set` ('class (probability); ...', most probable first)."""
    k = max((len(r["top"]) for r in rows), default=0)
    with_sets = any("set" in r for r in rows)
    cols = (["path"] + [f"{w}_{i}" for i in range(1, k + 1) for w in ("class", "prob")] + ["temperature", "error",
            "unfamiliar"] + (["set_size", "set"] if with_sets else []))
    with open(path, "w", newline="") as f:
        w = csv.writer(f); w.writerow(cols)
        for r in rows:
            top = [v for c, p in r["top"] for v in (c, f"{p:.6f}")] + [""] * (2 * (k - len(r["top"])))
            extra = ([len(r["set"]), "; ".join(f"{c} ({p:.6f})" for c, p in r["set"])] if "set" in r else ["", ""]) \
                if with_sets else []
            odd = "" if r.get("unfamiliar") is None else int(r["unfamiliar"])
            w.writerow([csv_cell(c) for c in (r["path"], *top, f"{r['T']:.6g}", r["error"] or "", odd, *extra)])
