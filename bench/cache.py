"""Decoded-image cache: epoch time and peak memory of `train.cache: none | memory | disk` on one recipe, one run.

    python bench/cache.py --data-root ../shared/datasets/cub100 [--recipe recipes/cub100_short.yaml] [--epochs 3]

Each (method, cache) pair trains `--epochs` epochs in its own process (so its peak RSS is its own), one after the
other on an otherwise idle machine, in the order ce/none, ce/memory, ce/disk, cskd/none, ... . Epoch times come
from the runs' history.csv (fastai's per-epoch `time`, validation included); the first epoch of a cached run is
reported apart, and the cache build time (printed by `train`) is reported as such. The ratio none/memory of the
median later-epoch times is the speed-up. Prints a Markdown table; `--json FILE` writes the numbers.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = ("import resource, sys\n"
         "from cskd_fastai.cli import app\n"
         "try: app(sys.argv[1:], standalone_mode=False)\n"
         "finally: print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n")


def _seconds(t: str) -> float:
    parts = [float(p) for p in t.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def run(recipe: Path, data_root: str, method: str, cache: str, epochs: int, out: Path, threads: int,
        workers: int | None = None) -> dict:
    args = ["train", str(recipe), "--data-root", data_root, "--out", str(out), "--only", method, "--no-progress",
            "--set", f"train.epochs={epochs}", "--set", f"train.cache={cache}", "--set", "seeds=[0]"]
    if workers is not None: args += ["--set", f"train.workers={workers}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.time() - t0
    if r.returncode: raise SystemExit(f"{method}/{cache} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    hist = next(out.rglob("history.csv"))
    times = [_seconds(row["time"]) for row in csv.DictReader(hist.open())]
    build = re.search(r"ready in ([\d.]+)s", r.stdout)
    rss = int(re.search(r"MAXRSS_KB (\d+)", r.stdout).group(1)) / 1024
    err = json.loads(next(out.rglob("metrics.json")).read_text())["test"]["top1_err"]
    return dict(method=method, cache=cache, workers=workers, epoch_times=times, first=times[0],
                later_median=statistics.median(times[1:]) if len(times) > 1 else times[0],
                build_s=float(build.group(1)) if build else 0.0, peak_rss_mb=round(rss), wall_s=round(wall, 1),
                test_top1_err=err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "cub100_short.yaml")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--methods", default="ce,cskd-lam3-T4")
    ap.add_argument("--caches", default="none,memory,disk")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run (OMP_NUM_THREADS)")
    ap.add_argument("--workers", type=int, default=None, help="override train.workers (default: the recipe's)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cskd-cache-bench-") as tmp:
        for method in a.methods.split(","):
            for cache in a.caches.split(","):
                out = Path(tmp) / f"{method}-{cache}"
                rows.append(run(a.recipe, a.data_root, method, cache, a.epochs, out, a.threads, a.workers))
                print(f"{method:>16} {cache:>6}: epochs {rows[-1]['epoch_times']} s, peak RSS "
                      f"{rows[-1]['peak_rss_mb']} MB", flush=True)
    workers = "the recipe's" if a.workers is None else a.workers
    print(f"\nloader workers: {workers}; torch threads {a.threads}")
    print("\n| method | cache | build (s) | 1st epoch (s) | later epochs, median (s) | speed-up vs none | peak RSS (MB) | test top-1 err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["method"] == r["method"] and b["cache"] == "none")
        print(f"| {r['method']} | {r['cache']} | {r['build_s']:.1f} | {r['first']:.1f} | {r['later_median']:.1f} | "
              f"{base['later_median'] / r['later_median']:.2f}x | {r['peak_rss_mb']} | {100 * r['test_top1_err']:.1f}% |")
    if a.json: a.json.write_text(json.dumps(dict(recipe=str(a.recipe), epochs=a.epochs, rows=rows), indent=2))


if __name__ == "__main__":
    main()
