"""Which temperature should a run's probabilities use by default? Compares, on finished runs' stored logits, the test
NLL under four rules for fitting T on the VALIDATION logits (never on test):

- `fit`: the NLL-optimal T, always applied (the rule the demo had);
- `bounded`: the same with T clamped to [0.2, 5];
- `min-errors`: the fit only when the validation split has at least `MIN_ERRORS` misclassified images, else T = 1;
- `checked`: `min-errors` plus a 5-fold cross-validation on the validation split that must show a held-out NLL gain
  (`cskd_fastai.metrics.calibration.fit_temperature_checked`, the rule the demo, `predict` and `compare` use).

    python docs/scripts/temperature_rule.py docs/evidence
"""
import sys

import numpy as np

from cskd_fastai.metrics.calibration import MIN_ERRORS, fit_temperature, fit_temperature_checked
from cskd_fastai.metrics.functional import nll
from cskd_fastai.rundir import find_runs, load_logits, load_run

print("| run | valid n / errors | fitted T | test NLL at T = 1 | fit | bounded | min-errors | checked (T used) |")
print("|---|---|---|---|---|---|---|---|")
worse = {k: 0 for k in ("fit", "bounded", "min-errors", "checked")}
runs = find_runs(sys.argv[1:])
for d in runs:
    vz, vy, _ = load_logits(d, "valid"); tz, ty, _ = load_logits(d, "test")
    T = fit_temperature(vz, vy)
    chk = fit_temperature_checked(vz, vy)
    n_err = int((vz.argmax(1) != vy).sum())
    temps = {"fit": T, "bounded": float(np.clip(T, 0.2, 5.0)), "min-errors": T if n_err >= MIN_ERRORS else 1.0,
             "checked": chk.T}
    base = float(nll(tz, ty))
    vals = {k: float(nll(tz / t, ty)) for k, t in temps.items()}
    for k, v in vals.items(): worse[k] += v > base + 1e-9
    r = load_run(d); f = r.facts
    name = f"{f.get('recipe')}/{r.label}/seed{f.get('seed')}"
    print(f"| {name} | {len(vy)} / {n_err} | {T:.3f} | {base:.4f} | " + " | ".join(
        f"{vals[k]:.4f}" for k in ("fit", "bounded", "min-errors")) + f" | {vals['checked']:.4f} (T = {chk.T:.3g}) |")
print()
print(f"runs whose test NLL got worse than at T = 1 (of {len(runs)}): "
      + ", ".join(f"{k}: {v}" for k, v in worse.items()))

# Small validation splits: draw random subsets of each run's validation logits (seeded), fit on the subset with each
# rule, and count how often the test NLL ends up worse than at T = 1. This is the regime of a quickstart run or a
# small custom dataset, where a handful of validation errors decide the temperature.
rng = np.random.default_rng(0)
print()
print("| valid subset size | draws | fit: worse / mean ΔNLL | bounded | min-errors | checked |")
print("|---|---|---|---|---|---|")
for m in (10, 20, 50, 100):
    worse = {k: [] for k in ("fit", "bounded", "min-errors", "checked")}
    for d in runs:
        vz, vy, _ = load_logits(d, "valid"); tz, ty, _ = load_logits(d, "test")
        if len(vy) < 2 * m: continue
        base = float(nll(tz, ty))
        for _ in range(20):
            idx = rng.choice(len(vy), m, replace=False)
            z, y = vz[idx], vy[idx]
            T = fit_temperature(z, y); n_err = int((z.argmax(1) != y).sum())
            temps = {"fit": T, "bounded": float(np.clip(T, 0.2, 5.0)), "min-errors": T if n_err >= MIN_ERRORS else 1.0,
                     "checked": fit_temperature_checked(z, y).T}
            for k, t in temps.items(): worse[k].append(float(nll(tz / t, ty)) - base)
    n = len(worse["fit"])
    if not n: continue
    print(f"| {m} | {n} | " + " | ".join(f"{sum(v > 1e-9 for v in worse[k])} / {np.mean(worse[k]):+.4f}"
                                         for k in ("fit", "bounded", "min-errors", "checked")) + " |")
