"""Tables of `eval --ood ... --shift ...` reports (issue #39; docs/results.md §10): one JSON per run in a folder, the
CE run's (`ce-*.json`) the reference of the mCE column.

    python docs/scripts/trust_table.py docs/evidence/trust_cub100_finetune
"""
import glob
import json
import os
import sys

from cskd_fastai.shift import relative_errors
if len(sys.argv) != 2: sys.exit(__doc__)
rows = {os.path.basename(f)[:-5]: json.load(open(f)) for f in sorted(glob.glob(os.path.join(sys.argv[1], '*.json')))}
ce = next((r for k, r in rows.items() if k.startswith('ce-')), None)
print("| run | fitted T | OOD Fashion-MNIST AUROC MSP / energy / max-logit | FPR95 MSP | flagged: test / F-MNIST / digits |")
print("|---|---|---|---|---|")
for k, r in rows.items():
    o = r['ood']['fashion_mnist']; d = r['ood']['digits']
    tk = [t for t in o if t.startswith('T=')][-1]
    T = r['shift']['T']
    print(f"| {k} | {T:.3g} | {o[tk]['msp']['auroc']:.3f} / {o[tk]['energy']['auroc']:.3f} / {o[tk]['max_logit']['auroc']:.3f} | {o[tk]['msp']['fpr95']:.3f} | "
          f"{o['flag']['test_flagged']:.3f} / {o['flag']['ood_flagged']:.3f} / {d['flag']['ood_flagged']:.3f} |")
print()
print("| run | clean top-1 err | corrupted top-1 err (sev 1 / 3 / 5) | mean ECE raw / at T | clean ECE raw / at T | mean NLL raw / at T | mCE vs CE |")
print("|---|---|---|---|---|---|---|")
for k, r in rows.items():
    s = r['shift']; m = s['mean']; b = s['mean_by_severity']
    rel = relative_errors(s, ce['shift'])['mCE'] if ce else float('nan')
    print(f"| {k} | {s['clean']['top1_err']*100:.1f} | {b['1']['top1_err']*100:.1f} / {b['3']['top1_err']*100:.1f} / {b['5']['top1_err']*100:.1f} | "
          f"{m['ece']:.3f} / {m['ece_ts']:.3f} | {s['clean']['ece']:.3f} / {s['clean']['ece_ts']:.3f} | {m['nll']:.2f} / {m['nll_ts']:.2f} | {rel:.3f} |")
