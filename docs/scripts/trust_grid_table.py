"""Tables of a trust grid (issue #39 part 5; docs/results.md §11): every archived seed's trust.json under
EVIDENCE/RECIPE, mean ± std over seeds per method. mCE and the paired table pair each seed with CE's of the same seed.

    python docs/scripts/trust_grid_table.py docs/evidence/cub100_finetune_trust            # print
    python docs/scripts/trust_grid_table.py docs/evidence/cub100_finetune_trust --write docs/results.md   # refresh
    python docs/scripts/trust_grid_table.py docs/evidence/cub100_finetune_trust --check docs/results.md   # tests

--write/--check use the block between `<!-- trust-grid:RECIPE:start -->` and `<!-- trust-grid:RECIPE:end -->`.

tests/test_docs.py calls `tables` and `marked_block.refresh` in process (one torch import, not one per grid).
"""
import glob
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from cskd_fastai.shift import relative_errors


def ms(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs: return "—"
    return fmt.format(np.mean(xs)) + ("" if len(xs) == 1 else " ± " + fmt.format(np.std(xs, ddof=1)))


def at(d, fitted):
    "The 'T=1' entry, or the fitted-T one (the 'T=1' one where validation supported no fit: then there is no other)."
    other = [k for k in d if k.startswith('T') and k != 'T=1']
    return d[other[0]] if fitted and other else d['T=1']


def ood(r, src, score, metric, fitted):
    o = r.get('ood', {}).get(src)
    return at(o, fitted)[score][metric] if o else None


def load(folder) -> dict:
    "label -> seed -> trust.json (plus the run's test metrics)."
    runs = defaultdict(dict)
    for f in sorted(glob.glob(os.path.join(str(folder), '*', 'seed*', 'trust.json'))):
        seed_dir = os.path.dirname(f)
        r = json.loads(Path(f).read_text())
        r.setdefault('test', json.loads(Path(seed_dir, 'metrics.json').read_text())['test'])   # trust.json keeps no test metrics
        runs[os.path.basename(os.path.dirname(seed_dir))][os.path.basename(seed_dir)] = r
    return runs


def tables(folder) -> str:
    "The three tables of the grid in FOLDER (docs/evidence/RECIPE), as Markdown."
    runs = load(folder)
    lines = []
    print = lines.append   # built as lines, then printed or written into the marked block
    order = sorted(runs, key=lambda k: (k != 'ce', k))
    print("| method | seeds | test top-1 err (%) | AURC T=1 / at T | near-OOD AUROC MSP T=1 / at T | near-OOD AUROC energy | "
          "near-OOD FPR95 MSP at T | flagged: test / held-out species | far-OOD AUROC MSP: F-MNIST / digits |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in order:
        rs = list(runs[k].values())
        print(f"| {k} | {len(rs)} | {ms([r['test']['top1_err'] * 100 for r in rs], '{:.2f}')} | "
              f"{ms([at(r['selective'], 0)['aurc'] for r in rs], '{:.3f}')} / {ms([at(r['selective'], 1)['aurc'] for r in rs], '{:.3f}')} | "
              f"{ms([ood(r, 'holdout', 'msp', 'auroc', 0) for r in rs], '{:.3f}')} / {ms([ood(r, 'holdout', 'msp', 'auroc', 1) for r in rs], '{:.3f}')} | "
              f"{ms([ood(r, 'holdout', 'energy', 'auroc', 1) for r in rs], '{:.3f}')} | "
              f"{ms([ood(r, 'holdout', 'msp', 'fpr95', 1) for r in rs], '{:.3f}')} | "
              f"{ms([r['ood']['holdout']['flag']['test_flagged'] for r in rs if 'holdout' in r.get('ood', {})], '{:.3f}')} / "
              f"{ms([r['ood']['holdout']['flag']['ood_flagged'] for r in rs if 'holdout' in r.get('ood', {})], '{:.3f}')} | "
              f"{ms([ood(r, 'fashion_mnist', 'msp', 'auroc', 1) for r in rs], '{:.3f}')} / {ms([ood(r, 'digits', 'msp', 'auroc', 1) for r in rs], '{:.3f}')} |")
    print('')
    print("| method | seeds | clean top-1 err (%) | corrupted top-1 err (%) sev 1 / 3 / 5 | mean ECE raw / at T | mean NLL raw / at T | mCE vs CE (same seed) |")
    print("|---|---|---|---|---|---|---|")
    ce = runs.get('ce', {})
    for k in order:
        rs = runs[k]
        sh = [r['shift'] for r in rs.values() if 'shift' in r]
        rel = [relative_errors(r['shift'], ce[s]['shift'])['mCE'] for s, r in rs.items() if 'shift' in r and s in ce]
        sev = " / ".join(ms([s['mean_by_severity'][v]['top1_err'] * 100 for s in sh], '{:.1f}')
                         for v in sorted(sh[0]['mean_by_severity'], key=int)) if sh else "—"
        print(f"| {k} | {len(sh)} | {ms([s['clean']['top1_err'] * 100 for s in sh], '{:.1f}')} | {sev} | "
              f"{ms([s['mean']['ece'] for s in sh], '{:.3f}')} / {ms([s['mean']['ece_ts'] for s in sh], '{:.3f}')} | "
              f"{ms([s['mean']['nll'] for s in sh], '{:.2f}')} / {ms([s['mean']['nll_ts'] for s in sh], '{:.2f}')} | "
              f"{ms(rel, '{:.3f}')} |")
    print('')
    print("Paired with CE of the same seed (method − CE, seed by seed; negative is better except for AUROC):")
    print('')
    print("| method | seeds | Δ top-1 err (points) | Δ AURC at T | Δ near-OOD AUROC MSP at T | Δ mean corrupted ECE at T | Δ mean corrupted NLL at T |")
    print("|---|---|---|---|---|---|---|")
    for k in order:
        if k == 'ce': continue
        pairs = [(r, ce[s]) for s, r in sorted(runs[k].items()) if s in ce]
        if not pairs: continue
        def d(f, fmt): return " / ".join(fmt.format(f(a) - f(b)) for a, b in pairs)
        print(f"| {k} | {len(pairs)} | {d(lambda r: r['test']['top1_err'] * 100, '{:+.2f}')} | "
              f"{d(lambda r: at(r['selective'], 1)['aurc'], '{:+.3f}')} | "
              f"{d(lambda r: ood(r, 'holdout', 'msp', 'auroc', 1), '{:+.3f}')} | "
              f"{d(lambda r: r['shift']['mean']['ece_ts'], '{:+.3f}')} | {d(lambda r: r['shift']['mean']['nll_ts'], '{:+.2f}')} |")
    return "\n".join(lines) + "\n"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- trust-grid:{name}:start -->", f"<!-- trust-grid:{name}:end -->"


if __name__ == "__main__":
    from marked_block import refresh
    args = sys.argv[1:]
    if len(args) not in (1, 3) or (len(args) == 3 and args[1] not in ("--write", "--check")): sys.exit(__doc__)
    table = tables(args[0])
    if len(args) == 1: sys.stdout.write(table); sys.exit(0)
    sys.exit(refresh(args[2], *markers(os.path.basename(os.path.normpath(args[0]))), table, args[1][2:],
                     f"python docs/scripts/trust_grid_table.py {args[0]} --write {args[2]}"))
