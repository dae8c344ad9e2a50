"""`compare`: one table of test metrics (mean ± std over seeds), one row per setting: runs are seeds of one row only
when they share the recipe, dataset, model, image size, schedule, epochs, batch size, learning rate and method.

Calibration columns: ECE with 15 equal-width bins (top label), the same with 15 equal-mass bins, the class-wise
ECE (every class's probability, 15 equal-width bins), NLL, and ECE / NLL after temperature scaling, T fitted by NLL
on the run's *validation* logits where the validation split supports it (`calibration.fit_temperature_checked`,
else T = 1) and applied to the test logits. Runs archived before the equal-mass and class-wise ECE existed get them
computed from their stored logits."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .rundir import RunDirError, finished_runs, load_run

__all__ = ["collect", "summarize", "to_markdown", "to_csv", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("top1_err", "top5_err", "ece", "ece_adaptive", "ece_classwise", "nll", "ece_ts", "nll_ts", "cov90",
                  "size90", "aurc", "augrc")
_HEADS = ("top-1 err (%)", "top-5 err (%)", "ECE", "ECE eq-mass", "ECE class-wise", "NLL", "ECE @T", "NLL @T",
          "cov@90", "size@90", "AURC", "AUGRC")
EXPLAIN = ("Errors in %; ± is the sample std over seeds (no ± with one seed). ECE: top-label, 15 equal-width bins; "
           "eq-mass: 15 equal-mass bins; class-wise: every class's probability, 15 equal-width bins. @T: after "
           "temperature scaling with T fitted by NLL on the validation split (never on test), T = 1 where the "
           "validation split has too few errors to support a fit. cov@90 / size@90: empirical coverage and mean size "
           "of 90% conformal prediction sets (LAC score, at T) calibrated on the validation split; the guarantee "
           "holds for test images exchangeable with the validation ones. AURC / AUGRC: area under the (generalised) "
           "risk-coverage curve of max-softmax confidence at T = 1, lower is better (`metrics.selective`).")


# How far a number in metrics.json may sit from the same number recomputed from logits.pt (float32 sums in
# another order), or from an archived run's float16 logits.npz (`rundir.compact.COMPACT_TOL`); anything further means
# one of the two files was changed after `train` wrote them.
AGREE_TOL = 1e-4


def check_agrees(p: Path, split: str, stored: dict, recomputed: dict) -> None:
    "One `RunDirError` line naming the run and the metric when metrics.json disagrees with the stored logits."
    from .rundir.compact import COMPACT_LOGITS, COMPACT_TOL
    from .rundir.layout import logits_file
    name = logits_file(p)
    for k, v in recomputed.items():
        tol = COMPACT_TOL.get(k, AGREE_TOL) if name == COMPACT_LOGITS else AGREE_TOL
        if k in stored and not (isinstance(stored[k], (int, float)) and abs(float(stored[k]) - v) <= tol):
            raise RunDirError(f"run dir {p}: metrics.json says {split} {k} = {stored[k]!r} but its {name} gives "
                              f"{v:.6g}; one of the two was changed after training: restore the run or retrain it")


def _scores(p: Path, split: str, metrics: dict) -> dict:
    """The table's numbers for one run, every one from its stored logits (metrics.json must agree with them: a
    changed file is refused, never shown beside numbers from the other), plus the temperature-scaled ones."""
    from .metrics.calibration import apply_temperature, fit_temperature_checked
    from .metrics.conformal import prediction_sets, set_metrics
    from .metrics.functional import calibration_error, classification_metrics, nll
    from .metrics.selective import selective_metrics
    from .rundir import load_logits
    z, y, _ = load_logits(p, split)
    vz, vy, _ = load_logits(p, "valid")
    for name, (a, b) in ((split, (z, y)), ("valid", (vz, vy))):
        shaped = a.ndim == 2 and b.ndim == 1 and len(a) == len(b)
        if not shaped or not bool(a.isfinite().all()):
            what = "not finite" if shaped else f"of shape {tuple(a.shape)} for {tuple(b.shape)} labels"
            raise RunDirError(f"run dir {p}: logits.pt's {name} logits are {what}; restore the file or retrain the run")
    out = classification_metrics(z, y)
    check_agrees(p, split, metrics, out)
    # shown: the numbers `train` computed from the float32 logits (an archived run keeps float16 ones)
    out.update({k: float(metrics[k]) for k in out if k in metrics})
    T = fit_temperature_checked(vz, vy).T
    out.update(ece_ts=float(calibration_error(z / T, y)), nll_ts=float(nll(z / T, y)), T=T)
    sel = selective_metrics(z, y)
    out.update(aurc=sel["aurc"], augrc=sel["augrc"])
    try:
        cs = prediction_sets(apply_temperature(vz, T).numpy(), vy.numpy(), apply_temperature(z, T).numpy(), 0.9, "lac")
        m = set_metrics(cs.sets, y.numpy())
        out.update(cov90=m["coverage"], size90=m["mean_size"])
    except ValueError: out.update(cov90=None, size90=None)   # too few validation images for 90%: shown as —
    return out


# What makes two runs seeds of one setting (facts of metrics.json); the first five are the table's columns.
GROUP_FACTS = ("recipe", "dataset", "model", "method", "epochs", "image_size", "schedule", "bs", "lr")
_SHOWN = 5


def collect(paths: Iterable, split: str = "test") -> list[dict]:
    "One row per finished run: its grouping facts and its `split` ('test' or 'valid') metrics."
    rows = []
    for p in finished_runs(paths):
        r = load_run(p)
        f = r.facts
        if split not in r.metrics: raise RunDirError(f"run dir {p}: metrics.json has no {split!r} split")
        facts = {k: f.get(k) for k in GROUP_FACTS} | dict(recipe=f.get("recipe", "?"), dataset=f.get("dataset", "?"),
                                                           model=f.get("model", "?"), method=r.label)
        rows.append(dict(facts, seed=f.get("seed"), path=str(p), **_scores(p, split, r.metrics[split])))
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Group rows by every fact in `GROUP_FACTS` (never by loader type alone: two ImageFolder recipes are two
    datasets): mean and sample std (ddof=1; 0 for one seed) of each metric. Where two groups would look alike in
    the table's columns, the facts that tell them apart are appended to the method cell."""
    groups: dict = {}
    for r in rows: groups.setdefault(tuple(r.get(k) for k in GROUP_FACTS), []).append(r)
    shown: dict = {}
    for key in groups: shown.setdefault(key[:_SHOWN], []).append(key)
    out = []
    for key, rs in groups.items():
        row = dict(zip(GROUP_FACTS, key), seeds=len(rs))
        twins = shown[key[:_SHOWN]]
        if len(twins) > 1:   # e.g. one recipe name trained twice with another lr: say which row is which
            diff = [k for i, k in enumerate(GROUP_FACTS[_SHOWN:], _SHOWN) if len({t[i] for t in twins}) > 1]
            row["method"] = f"{row['method']} [{', '.join(f'{k}={key[GROUP_FACTS.index(k)]}' for k in diff)}]"
        for k in METRIC_COLUMNS:
            v = np.array([np.nan if r.get(k) is None else r[k] for r in rs], dtype=float)
            row[k] = float(v.mean()); row[k + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(row)
    return sorted(out, key=lambda r: (str(r["recipe"]), str(r["dataset"]), str(r["model"]), str(r["epochs"]), r["method"]))


def _fmt(r: dict, k: str) -> str:
    "The mean, with ± the std over seeds when there is more than one seed."
    if not np.isfinite(r[k]): return "—"
    if not k.endswith("_err") and k.startswith("size"):
        return f"{r[k]:.2f} ± {r[k + '_std']:.2f}" if r["seeds"] > 1 else f"{r[k]:.2f}"
    pct = k.endswith("_err")
    m, s = (100 * r[k], 100 * r[k + "_std"]) if pct else (r[k], r[k + "_std"])
    spec = ".2f" if pct else ".4f"
    return f"{m:{spec}} ± {s:{spec}}" if r["seeds"] > 1 else f"{m:{spec}}"


def to_markdown(summary: list[dict], explain: bool = True, split: str = "test") -> str:
    """Markdown table; errors in %, calibration numbers as such; ± is the std over seeds; a sentence on the columns.
    `split='valid'` says so in a title line and in the legend (T is still fitted on the validation split)."""
    head = "| recipe | dataset | model | method | epochs | seeds | " + " | ".join(_HEADS) + " |"
    title = ["**validation split** (choose settings here; report the test split)", ""] if split == "valid" else []
    lines = title + [head, "|---" * (head.count("|") - 1) + "|"]
    for r in summary:
        lines.append(f"| {r['recipe']} | {r['dataset']} | {r['model']} | {r['method']} | {r['epochs']} | {r['seeds']} | "
                     + " | ".join(_fmt(r, k) for k in METRIC_COLUMNS) + " |")
    legend = EXPLAIN if split == "test" else EXPLAIN.replace("(never on test)", "(these are that same split's numbers)")
    return "\n".join(lines + (["", legend] if explain else []))


def to_csv(summary: list[dict], path: Path) -> None:
    import csv
    cols = ["recipe", "dataset", "model", "method", "epochs", "seeds"] + [c for k in METRIC_COLUMNS for c in (k, k + "_std")]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols); w.writeheader(); w.writerows({c: r[c] for c in cols} for r in summary)


SET_COLUMNS = [(f"{name}_{c}_{m}", name, c, m) for c in ("0.9", "0.95")
               for name, m in (("lac", "coverage"), ("lac", "mean_size"), ("lac", "median_size"),
                               ("lac_classwise", "worst_class_coverage"))]


def set_table(paths: Iterable, split: str = "test") -> str:
    """`compare --sets`: per setting (mean over seeds) the coverage, mean and median size of LAC sets at 90% and 95%
    and the worst class's coverage of the class-conditional form, calibrated on the validation split at the fitted T
    and measured on `split` (one draw: the splits as they are; docs/results.md §8 has the 100-draw protocol)."""
    from .metrics.calibration import fit_temperature_checked
    from .rundir import load_logits
    from .sets import run_conformal
    groups, notes = {}, set()
    for p in finished_runs(paths):
        r = load_run(p)
        vz, vy, _ = load_logits(p, "valid"); z, y, _ = load_logits(p, split)
        rep = run_conformal((vz, vy), (z, y), fit_temperature_checked(vz, vy).T, scores=("lac",))
        key = (r.facts.get("recipe", "?"), r.label)
        groups.setdefault(key, []).append([rep[n][c].get(m, np.nan) for _, n, c, m in SET_COLUMNS])
        notes |= {f"{r.label}: {rep['lac_classwise'][c]['note']}" for c in ("0.9", "0.95")
                  if rep["lac_classwise"][c].get("note")}
    heads = [f"{'LAC' if n == 'lac' else 'class-cond.'} {float(c):.0%} {m.replace('_', ' ')}" for _, n, c, m in SET_COLUMNS]
    lines = ["| recipe | method | seeds | " + " | ".join(heads) + " |", "|---" * (len(heads) + 3) + "|"]
    for (recipe, label), vals in sorted(groups.items()):
        a = np.array(vals, dtype=float)
        mean = [float(np.mean(col[np.isfinite(col)])) if np.isfinite(col).any() else np.nan for col in a.T]
        cells = ["—" if not np.isfinite(v) else f"{v:.3f}" for v in mean]
        lines.append(f"| {recipe} | {label} | {len(vals)} | " + " | ".join(cells) + " |")
    lines += ["", *sorted(f"- {n}" for n in notes)] if notes else []
    return "\n".join(lines + ["", f"Prediction sets calibrated on the validation split at the fitted T, measured on the "
                              f"{split} split; '—': the validation split is too small for that coverage. The guarantee "
                              f"holds for images exchangeable with the validation split."])
