"""Rewrite archived runs in place to the compact form `cskd-fastai archive` now writes: logits.pt -> logits.npz
(float16, checked to give the same top-k errors and, within `rundir.compact.COMPACT_TOL`, the same metrics), plots
dropped. Runs already compact are left alone.

    python docs/scripts/compact_evidence.py docs/evidence
"""
import sys

from cskd_fastai.rundir import RunDirError, finished_runs
from cskd_fastai.rundir.archive import compact_archived

if len(sys.argv) < 2: sys.exit("usage: compact_evidence.py FOLDER...  (folders of archived runs)")
done = 0
try:
    for run in finished_runs(sys.argv[1:]):
        if compact_archived(run):
            done += 1
            print(f"compacted {run}")
except RunDirError as e: sys.exit(f"compact_evidence.py: {e}")
print(f"{done} run(s) compacted")
