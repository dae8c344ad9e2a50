"""Coverage and size of 90% conformal prediction sets from archived logits (issue #34's evidence), no retraining.

    python docs/scripts/conformal_table.py docs/evidence/cub100_short docs/evidence/cub100_long ...

The standard protocol for comparing methods: for each run, 100 random splits of its TEST logits into a calibration
half and an evaluation half (`metrics.conformal.random_split_evaluation`); per run the mean over draws, then mean ±
std over seeds. Each score with T = 1 and with the temperature fitted on the run's VALIDATION logits (never test).
This is evidence for comparing methods; a deployed set is calibrated on the validation split (`sets.py`).
"""
import re
import sys
from collections import defaultdict

import numpy as np

from cskd_fastai.metrics.calibration import apply_temperature, fit_temperature_checked
from cskd_fastai.metrics.conformal import random_split_evaluation
from cskd_fastai.rundir import find_runs, load_logits, load_run

SCORES = ("lac", "aps", "aps_randomized", "raps_randomized")
KEEP = re.compile(r"^(ce|ls0\.1|cskd-lam[1-9][\d.]*-T4(-gated|-inbatch|-stored-gated)?|tfkd-.*|pskd-a0\.8)$")
COVERAGE, DRAWS = 0.9, 100

rows = defaultdict(list)
for d in find_runs(sys.argv[1:]):
    run = load_run(d)
    if not KEEP.match(run.label): continue
    vz, vy, _ = load_logits(d, "valid"); tz, ty, _ = load_logits(d, "test")
    T = fit_temperature_checked(vz, vy).T
    cell = {}
    for t_name, t in (("T=1", 1.0), ("T fitted", T)):
        p = apply_temperature(tz, t).numpy()
        for s in SCORES:
            r = random_split_evaluation(p, ty.numpy(), COVERAGE, s, n_draws=DRAWS, seed=0)
            cell[(t_name, s)] = (r["coverage"][0], r["mean_size"][0], r["coverage"][1])
    rows[(run.facts.get("recipe"), run.label)].append(cell)
    print(f"done {d}", file=sys.stderr, flush=True)

for recipe in sorted({r for r, _ in rows}):
    print(f"\n**{recipe}** ({COVERAGE:.0%} sets; coverage / mean set size, mean ± std over seeds; draw-to-draw std of "
          f"coverage in brackets)\n")
    heads = [f"{s} {t}" for t in ("T=1", "T fitted") for s in SCORES]
    print("| method | seeds | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * len(heads))
    for (rec, label), cells in sorted(rows.items()):
        if rec != recipe: continue
        out = []
        for t in ("T=1", "T fitted"):
            for s in SCORES:
                a = np.array([c[(t, s)] for c in cells])
                sd = a.std(0, ddof=1) if len(a) > 1 else np.zeros(3)
                out.append(f"{a[:, 0].mean():.3f} ± {sd[0]:.3f} [{a[:, 2].mean():.3f}] / {a[:, 1].mean():.2f} ± {sd[1]:.2f}")
        print(f"| {label} | {len(cells)} | " + " | ".join(out) + " |")
