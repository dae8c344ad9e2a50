"""Run directories: what `cskd-fastai train` writes, and how `eval`, `compare`, `analyze` and the demo read it.
`files` names and checks the files, `lock` keeps one writer, `layout` reads a run, `archive` keeps its small files
(`compact` their logits), `examples` its demo thumbnails.

Layout of one run (one method, one seed):
    recipe.yaml      the resolved recipe of this run (single method, single seed)
    env.json         package versions, git commit, device, command line
    history.csv      one row per epoch (train/valid loss, metrics, CS-KD's CE/KD/λ/confidence columns)
    metrics.json     {"valid": {...}, "test": {...}, "facts": {...}} — final-epoch (or valid-selected) metrics
    logits.pt        {"valid": {"logits", "labels"}, "test": {"logits", "labels"}, "classes": [...]}
    model.safetensors  the final weights (tensors only: loading them runs no code); `eval`, `predict`, the demo,
                     `analyze` and a teacher rebuild the model from recipe.yaml and load these
    export.pkl       the exported learner for fastai's `load_learner` (a pickle: load only one you trust; this
                     package never unpickles it when model.safetensors is there)
    reliability.png, curves.png
    trust.json       the trust evaluations a recipe's `eval:` asks for (OOD, corruption, selective), when it does
    trust_logits.npz their logits (OOD sets, corrupted test images; `compact.save_trust_logits`), beside trust.json
    checkpoint.pth   the last finished epoch (model, optimizer, RNG states), kept for `--resume`
    hashes.json      SHA-256 of export.pkl and checkpoint.pth, written with them and checked before either is
                     unpickled (a file changed or truncated since `train` wrote it is refused, not loaded)
    examples/        a few test images as small PNGs + examples.json (true classes): the demo's examples
    DONE             written last: a run without it is unfinished
    .lock            held (flock) by the one process writing the run; released, even on a kill, when it exits

An *archived* run (`archive_run`, `cskd-fastai archive`) keeps only the small files that `compare` and the docs
scripts (temperature scaling, diagnostics, paired tests) read: recipe, env, history, metrics, trust.json and
trust_logits.npz if any, the
logits in the compact float16 `logits.npz` (`compact`: top-k errors exact, the other metrics within stated bounds)
and DONE.
Committed under `docs/evidence/`, it lets seeds trained in different sessions or on different machines be compared
as one table, without the export and checkpoint (over 100 MB for a ResNet-18 run; `eval`, `analyze` and the demo
need those).
"""
from __future__ import annotations

from ..safeio import disk_full_message, save_atomic, sha256  # noqa: F401  (what writers of a run dir use beside these)
from .archive import ARCHIVED, archive_run
from .examples import EXAMPLES, read_examples, write_examples
from .files import (BEST, CHECKPOINT, DONE, ENV, EXPORT, HASHES, HISTORY, LOCK, LOGITS, METRICS, PNGS, RECIPE, TRUST, TRUST_LOGITS, RunDirError,
                    RunLockedError, WEIGHTS, load_checkpoint, load_hashed, load_weights, read_json, read_verified,
                    read_yaml, record_hash, save_hashed, save_weights, verify_hash)
from .layout import (Run, find_runs, finished_runs, is_done, load_logits, load_run, load_run_learner, mark_done,
                     save_logits, save_metrics)
from .lock import run_lock

__all__ = ["RunDirError", "RunLockedError", "Run", "load_run", "load_logits", "save_logits", "load_run_learner",
           "find_runs", "finished_runs", "is_done", "save_metrics", "mark_done", "archive_run", "ARCHIVED", "run_lock",
           "record_hash", "verify_hash", "read_verified", "load_hashed", "save_weights", "load_weights", "read_json", "read_yaml", "load_checkpoint", "save_atomic", "save_hashed",
           "disk_full_message", "EXAMPLES", "write_examples", "read_examples"]
