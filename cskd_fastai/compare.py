"""`compare`: one table of test metrics (mean ± std over seeds), grouped by dataset / model / method."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .rundir import finished_runs, load_run

__all__ = ["collect", "summarize", "to_markdown", "to_csv", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("top1_err", "top5_err", "ece", "nll")


def collect(paths: Iterable, split: str = "test") -> list[dict]:
    "One row per finished run: its grouping facts and its `split` ('test' or 'valid') metrics."
    rows = []
    for p in finished_runs(paths):
        r = load_run(p)
        f = r.facts
        rows.append(dict(dataset=f.get("dataset", "?"), model=f.get("model", "?"), method=r.label,
                         epochs=f.get("epochs"), seed=f.get("seed"), path=str(p), **{k: r.metrics[split][k] for k in METRIC_COLUMNS}))
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    "Group rows by (dataset, model, method, epochs): mean and sample std (ddof=1; 0 for one seed) of each metric."
    groups: dict = {}
    for r in rows: groups.setdefault((r["dataset"], r["model"], r["method"], r["epochs"]), []).append(r)
    out = []
    for (ds, model, method, epochs), rs in groups.items():
        row = dict(dataset=ds, model=model, method=method, epochs=epochs, seeds=len(rs))
        for k in METRIC_COLUMNS:
            v = np.array([r[k] for r in rs], dtype=float)
            row[k] = float(v.mean()); row[k + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(row)
    return sorted(out, key=lambda r: (r["dataset"], r["model"], str(r["epochs"]), r["method"]))


def _fmt(r: dict, k: str) -> str:
    pct = k.endswith("_err")
    m, s = (100 * r[k], 100 * r[k + "_std"]) if pct else (r[k], r[k + "_std"])
    return f"{m:.2f} ± {s:.2f}" if pct else f"{m:.4f} ± {s:.4f}"


def to_markdown(summary: list[dict]) -> str:
    "Markdown table; errors in %, ECE and NLL as numbers; ± is the std over seeds."
    head = "| dataset | model | method | epochs | seeds | top-1 err (%) | top-5 err (%) | ECE | NLL |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in summary:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['method']} | {r['epochs']} | {r['seeds']} | "
                     + " | ".join(_fmt(r, k) for k in METRIC_COLUMNS) + " |")
    return "\n".join(lines)


def to_csv(summary: list[dict], path: Path) -> None:
    import csv
    cols = ["dataset", "model", "method", "epochs", "seeds"] + [c for k in METRIC_COLUMNS for c in (k, k + "_std")]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols); w.writeheader(); w.writerows({c: r[c] for c in cols} for r in summary)
