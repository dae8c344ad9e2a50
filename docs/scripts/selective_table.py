"""Selective-prediction metrics of archived runs (issue #39 part 1), recomputed from their stored test logits: one row
per recipe and method label, mean ± std over seeds.

    python docs/scripts/selective_table.py docs/evidence/cub100_long docs/evidence/cub100_finetune

Columns: AURC, E-AURC and AUGRC (×1000) of max-softmax confidence at T = 1, AURC at the temperature the run's
validation split supports (`calibration.fit_temperature_checked`; T = 1 where it supports none), risk at 90%
coverage and the coverage reached at 5% risk, both at T = 1. Lower is better except the coverage.
"""
import statistics
import sys

from cskd_fastai.metrics.calibration import fit_temperature_checked
from cskd_fastai.metrics.selective import selective_metrics
from cskd_fastai.rundir import RunDirError, finished_runs, load_logits, load_run


def fmt(xs, scale=1.0, d=1):
    xs = [x * scale for x in xs]
    return f"{statistics.mean(xs):.{d}f}" + (f" ± {statistics.stdev(xs):.{d}f}" if len(xs) > 1 else "")


if len(sys.argv) < 2: sys.exit(__doc__)
rows = {}
try:
    for p in finished_runs(sys.argv[1:]):
        f = load_run(p).facts
        z, y, _ = load_logits(p, "test")
        vz, vy, _ = load_logits(p, "valid")
        T = fit_temperature_checked(vz, vy).T
        m, mt = selective_metrics(z, y), selective_metrics(z, y, T)
        rows.setdefault((f["recipe"], f["label"]), []).append((m, mt["aurc"]))
except RunDirError as e: sys.exit(f"selective_table.py: {e}")
print("| recipe | method | seeds | AURC ×1000 | E-AURC ×1000 | AUGRC ×1000 | AURC @T ×1000 | risk@90% (%) | coverage@5% risk (%) |")
print("|---|---|---|---|---|---|---|---|---|")
for (recipe, label), rs in sorted(rows.items()):
    col = lambda k, s=1000.0: fmt([m[k] for m, _ in rs], s)
    print(f"| {recipe} | {label} | {len(rs)} | {col('aurc')} | {col('e_aurc')} | {col('augrc')} | "
          f"{fmt([t for _, t in rs], 1000.0)} | {col('risk_at_90', 100.0)} | {col('coverage_at_5', 100.0)} |")
