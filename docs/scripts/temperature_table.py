"""Test ECE/NLL before and after temperature scaling fitted on each run's VALIDATION logits (never on test).

    python docs/scripts/temperature_table.py runs/evidence/fmnist_short
"""
import sys
from collections import defaultdict

import numpy as np

from cskd_fastai.metrics.calibration import apply_temperature, fit_temperature
from cskd_fastai.metrics import classification_metrics
from cskd_fastai.rundir import find_runs, load_logits, load_run

rows = defaultdict(list)
for d in find_runs(sys.argv[1:]):
    vl, vy, _ = load_logits(d, "valid"); tl, ty, _ = load_logits(d, "test")
    T = fit_temperature(vl, vy)
    before, after = classification_metrics(tl, ty), classification_metrics(tl / T, ty)
    rows[load_run(d).label].append((T, before["ece"], after["ece"], before["nll"], after["nll"]))
print("| method | seeds | fitted T (valid) | test ECE before → after | test NLL before → after |")
print("|---|---|---|---|---|")
for label, rs in sorted(rows.items()):
    a = np.array(rs); m = a.mean(0)
    print(f"| {label} | {len(rs)} | {m[0]:.2f} | {m[1]:.4f} → {m[2]:.4f} | {m[3]:.4f} → {m[4]:.4f} |")
