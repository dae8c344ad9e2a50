"""Cost of `eval --shift`'s corruptions per image, per corruption (issue #39 part 3): the first call (numba compiles
glass blur) and the steady state, at a given side. Decides what a default draw of test images can afford.

    python bench/shift_cost.py --side 152 --n 20
"""
import argparse
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=152, help="the square side corrupted (cub100_finetune: 152)")
    ap.add_argument("--n", type=int, default=20, help="images timed per corruption and severity")
    ap.add_argument("--severities", default="1,3,5")
    a = ap.parse_args()
    from imagecorruptions import corrupt
    from cskd_fastai.shift import CORRUPTIONS
    g = np.random.default_rng(0)
    x = g.integers(0, 255, (a.n, a.side, a.side, 3), dtype=np.uint8)
    sev = [int(s) for s in a.severities.split(",")]
    print(f"side {a.side}px, {a.n} images, severities {sev}: seconds per image (first call; then steady median)")
    total = 0.0
    for c in CORRUPTIONS:
        t0 = time.perf_counter(); corrupt(x[0], corruption_name=c, severity=sev[0]); first = time.perf_counter() - t0
        per = []
        for s in sev:
            for im in x:
                t0 = time.perf_counter(); corrupt(im, corruption_name=c, severity=s); per.append(time.perf_counter() - t0)
        med = float(np.median(per)); total += med * len(sev)
        print(f"{c:18s} first {first:7.3f}  steady {med:7.4f}")
    print(f"all {len(CORRUPTIONS)} corruptions x {len(sev)} severities: {total:.2f} s per test image (steady)")


if __name__ == "__main__":
    main()
