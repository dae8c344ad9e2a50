#!/usr/bin/env python
"""Resident memory per epoch of a real `cskd-fastai train` run: does the training process grow epoch by epoch?

    .venv/bin/python bench/rss_growth.py                                   # fmnist_short, in-batch CS-KD, 12 epochs
    .venv/bin/python bench/rss_growth.py --recipe recipes/cub100_short.yaml --data-root ../shared/datasets/cub100 \
        --only cskd-lam3-T4-inbatch --epochs 6

Why: a 100-epoch cub100 run grew ~200 MB per epoch until the 24 GB machine ran out at epoch 95 (docs/results.md
§6). Unit tests on replicas run 1-2 epochs and cannot see that; this runs the real CLI in a subprocess (into a
temporary --out) and reads the process tree's resident set size (main process + DataLoader workers, Linux
/proc) when each `epoch k/N` line appears. Reported: RSS per epoch, the growth per epoch fitted over the epochs
after the first two (allocator and cache warm-up) on the main process (DataLoader workers are forked from it anew
every epoch), and the ratio last/third epoch. `--set train.malloc_trim_every=0` gives the 'before' of the fix
(`cskd_fastai.callbacks.memory`). Target: growth under 5 MB per epoch (the noise of glibc's allocator), i.e. a
100-epoch run ends within ~0.5 GB of where its third epoch was.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def tree_rss_mb(pid: int) -> tuple[float, float]:
    "RSS of `pid`, and of `pid` plus its descendants (DataLoader workers: forks, pages shared), in MB (Linux /proc)."
    kids = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit(): continue
        try: ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError): continue
        kids.setdefault(ppid, []).append(int(d.name))
    def rss(p: int) -> float:
        try: return next(int(l.split()[1]) / 1024 for l in Path(f"/proc/{p}/status").read_text().splitlines()
                         if l.startswith("VmRSS:"))
        except (OSError, StopIteration): return 0.0
    tree, todo = [], [pid]
    while todo:
        p = todo.pop(); tree.append(p); todo += kids.get(p, [])
    sizes = {p: rss(p) for p in tree}                # one read per process: main and total from the same moment
    return sizes[pid], sum(sizes.values())


def slope(xs, ys) -> float:
    n = len(xs); mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/fmnist_short.yaml")
    ap.add_argument("--only", default="cskd-lam1-T4-inbatch")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="recipe override passed to train, e.g. "
                    "train.malloc_trim_every=0 (the 'before' of the fix)")
    a = ap.parse_args()
    rec = yaml.safe_load(Path(a.recipe).read_text())
    rec["train"]["epochs"] = a.epochs
    with tempfile.TemporaryDirectory() as tmp:
        rp = Path(tmp) / Path(a.recipe).name
        rp.write_text(yaml.safe_dump(rec))
        cmd = [sys.executable, "-m", "cskd_fastai", "train", str(rp), "--out", str(Path(tmp) / "out"), "--no-progress",
               "--seed", "0", "--only", a.only] + [x for kv in a.set for x in ("--set", kv)]
        if a.data_root: cmd += ["--data-root", a.data_root]
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
        print(f"# {' '.join(cmd[3:])}  (threads {a.threads}, torch threads via OMP_NUM_THREADS)", flush=True)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        rows, t0 = [], time.time()
        for line in p.stdout:
            m = re.match(r"epoch (\d+)/(\d+) ", line)
            if m:
                main_mb, tree_mb = tree_rss_mb(p.pid)
                rows.append((int(m.group(1)), main_mb))
                t = re.search(r"time=(\S+)", line)
                print(f"epoch {rows[-1][0]:3d}  rss {main_mb:8.1f} MB (with workers {tree_mb:8.1f})  "
                      f"epoch time {t.group(1) if t else '?'}  ({time.time() - t0:.0f} s)", flush=True)
            elif line.startswith("error"): print(line.rstrip(), flush=True)
        rc = p.wait()
    if rc or len(rows) < 4: sys.exit(f"the run failed (rc {rc}) or logged under 4 epochs; nothing to report")
    tail = rows[2:]
    g = slope([e for e, _ in tail], [r for _, r in tail])
    print(f"growth {g:+.1f} MB/epoch over epochs {tail[0][0]}-{tail[-1][0]} (target < 5); "
          f"rss last/epoch {tail[0][0]} = {tail[-1][1] / tail[0][1]:.3f}; extrapolated to 100 epochs: "
          f"{tail[0][1] + max(g, 0.0) * (100 - tail[0][0]):.0f} MB")


if __name__ == "__main__":
    main()
