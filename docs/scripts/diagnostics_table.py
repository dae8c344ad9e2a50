"""Per-epoch training diagnostics of finished runs, averaged over seeds: when does the KD term carry information?

    python docs/scripts/diagnostics_table.py runs/evidence/cub100_short [--epochs 1,5,10,20,30]

Reads each run's `history.csv` (written by `cskd-fastai train`); prints, per method and chosen epoch, the valid
top-1 error and ECE, and for CS-KD runs the CE and KD parts of the training loss, λ, partner/anchor confidence and
the partner entropy at T (compare with log(#classes), the entropy of a uniform target).
"""
import argparse
import math
from collections import defaultdict

import pandas as pd

from cskd_fastai.rundir import HISTORY, find_runs, load_logits, load_run

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("dirs", nargs="+")
p.add_argument("--epochs", default="1,5,10,15,20,25,30", help="1-based epochs to show")
args = p.parse_args()
want = [int(e) for e in args.epochs.split(",")]
cols = ["top1_err", "ece", "train_ce", "train_kd", "cskd_lam", "partner_conf", "anchor_conf", "partner_entropy"]

hists, n_classes = defaultdict(list), None
for d in find_runs(args.dirs):
    h = pd.read_csv(d / HISTORY)
    hists[load_run(d).label].append(h.set_index(h["epoch"] + 1))
    n_classes = n_classes or len(load_logits(d, "test")[2] or []) or None
print(f"| method | seeds | epoch | " + " | ".join(f"valid {c}" if c in ("top1_err", "ece") else c for c in cols) + " |")
print("|---|---|---|" + "---|" * len(cols))
for label, hs in sorted(hists.items()):
    mean = sum(h.reindex(columns=cols).astype(float) for h in hs) / len(hs)
    for e in want:
        if e not in mean.index: continue
        row = mean.loc[e]
        cells = ["" if math.isnan(row[c]) else f"{row[c]:.3f}" for c in cols]
        print(f"| {label} | {len(hs)} | {e} | " + " | ".join(cells) + " |")
if n_classes: print(f"\nlog(#classes) = log({n_classes}) = {math.log(n_classes):.3f}: the entropy of a uniform partner target")
