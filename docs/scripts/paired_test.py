"""Exact McNemar test between two runs on the same test images: is an accuracy gap more than test-sampling noise?

    python docs/scripts/paired_test.py runs/evidence/cub100_long/ce/seed0 runs/evidence/cub100_long/cskd-lam3-T4/seed0

It answers only for the images of this test split; whether a gap holds across seeds needs more seeds.
"""
import sys
from math import comb

import torch

from cskd_fastai.rundir import RunDirError, load_logits


def same_images(ya: torch.Tensor, yb: torch.Tensor) -> bool:
    "Labels equal up to a renaming of class indices (runs before #18 stored labels in the loader's class order)."
    if ya.shape != yb.shape: return False
    pairs = set(zip(ya.tolist(), yb.tolist()))
    return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


if len(sys.argv) != 3: sys.exit("usage: paired_test.py RUN_DIR_A RUN_DIR_B  (two run directories with logits.pt)")
try: (la, ya, _), (lb, yb, _) = (load_logits(d, "test") for d in sys.argv[1:])
except RunDirError as e: sys.exit(f"paired_test.py: {e}")
if not same_images(ya, yb):
    sys.exit("paired_test.py: the two runs were not evaluated on the same test labels; pair runs of one dataset split")
ra, rb = la.argmax(-1) == ya, lb.argmax(-1) == yb
only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
n, k = only_a + only_b, min(only_a, only_b)
p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
print(f"test images: {len(ra)}  top-1 err A {1 - ra.float().mean():.4f}  B {1 - rb.float().mean():.4f}")
print(f"A right, B wrong: {only_a}  B right, A wrong: {only_b}  exact two-sided McNemar p = {p:.2g}")
