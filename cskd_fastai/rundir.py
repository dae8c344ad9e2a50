"""Run directories: what `cskd-fastai train` writes, and how `eval`, `compare`, `analyze` and the demo read it.

Layout of one run (one method, one seed):
    recipe.yaml      the resolved recipe of this run (single method, single seed)
    env.json         package versions, git commit, device, command line
    history.csv      one row per epoch (train/valid loss, metrics, CS-KD's CE/KD/λ/confidence columns)
    metrics.json     {"valid": {...}, "test": {...}, "facts": {...}} — final-epoch (or valid-selected) metrics
    logits.pt        {"valid": {"logits", "labels"}, "test": {"logits", "labels"}, "classes": [...]}
    export.pkl       the exported learner (fastai `load_learner`), no training-only callback inside
    reliability.png, curves.png
    checkpoint.pth   the last finished epoch (model, optimizer, RNG states), kept for `--resume`
    hashes.json      SHA-256 of export.pkl and checkpoint.pth, written with them and checked before either is
                     unpickled (a file changed or truncated since `train` wrote it is refused, not loaded)
    examples/        a few test images as small PNGs + examples.json (true classes): the demo's examples
    DONE             written last: a run without it is unfinished
    .lock            held (flock) by the one process writing the run; released, even on a kill, when it exits

An *archived* run (`archive_run`, `cskd-fastai archive`) keeps only the small files that `compare` and the docs
scripts (temperature scaling, diagnostics, paired tests) read: recipe, env, history, metrics, logits and DONE.
Committed under `docs/evidence/`, it lets seeds trained in different sessions or on different machines be compared
as one table, without the export and checkpoint (over 100 MB for a ResNet-18 run; `eval`, `analyze` and the demo
need those).
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from .examples import EXAMPLES, read_examples, write_examples  # noqa: F401  (the run-dir format, re-exported)
from .recipe import safe_component
from .safeio import disk_full_message, save_atomic, sha256  # noqa: F401  (re-exported)

__all__ = ["RunDirError", "RunLockedError", "Run", "load_run", "load_logits", "save_logits", "load_run_learner", "find_runs",
           "finished_runs", "is_done", "save_metrics", "mark_done", "archive_run", "ARCHIVED", "run_lock", "record_hash", "verify_hash",
           "read_json", "read_yaml", "load_checkpoint", "save_atomic", "save_hashed", "disk_full_message", "EXAMPLES",
           "write_examples", "read_examples"]

RECIPE, ENV, HISTORY, METRICS, LOGITS, EXPORT, CHECKPOINT, DONE, HASHES, LOCK = (
    "recipe.yaml", "env.json", "history.csv", "metrics.json", "logits.pt", "export.pkl", "checkpoint.pth", "DONE",
    "hashes.json", ".lock")
PNGS = ("reliability.png", "curves.png")

# DONE last: a partial copy is never a finished run
ARCHIVED = (RECIPE, ENV, HISTORY, METRICS, LOGITS, *PNGS, DONE)


class RunDirError(ValueError):
    "A run directory is missing or incomplete (one-line message naming the file)."


class RunLockedError(RunDirError):
    "Another live process is writing this run directory."


# ---- files that name themselves when they are unreadable ---------------------------------------------------
def read_json(path) -> dict:
    "A JSON file's content; a missing or corrupt file is one `RunDirError` line naming it."
    path = Path(path)
    try: return json.loads(path.read_text())
    except FileNotFoundError: raise RunDirError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is corrupt ({e}); restore it from a copy or retrain the run") from None


def read_yaml(path):
    import yaml
    path = Path(path)
    try: return yaml.safe_load(path.read_text())
    except FileNotFoundError: raise RunDirError(f"{path} is missing") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        msg = " ".join(str(e).split())
        raise RunDirError(f"{path} is corrupt ({msg}); restore it from a copy or retrain the run") from None


# ---- integrity of the pickles ------------------------------------------------------------------------------
def _hashes(run_dir: Path) -> dict:
    f = run_dir / HASHES
    return read_json(f) if f.exists() else {}


def _write_hashes(run_dir: Path, table: dict) -> None:
    save_atomic(lambda t: Path(t).write_text(json.dumps(table, indent=2)), run_dir / HASHES)


def record_hash(run_dir, name: str) -> str:
    "Record the SHA-256 of `run_dir/name`, as it is now, in hashes.json (rewritten atomically); returns the digest."
    run_dir = Path(run_dir)
    table = _hashes(run_dir)
    table[name] = [sha256(run_dir / name)]
    _write_hashes(run_dir, table)
    return table[name][0]


def save_hashed(write, run_dir, name: str) -> None:
    """Write `run_dir/name` atomically through `write(tmp_path)` and record its SHA-256.

    Crash-safe: the new digest is recorded next to the old one before the rename and alone after it, so whichever
    file a kill leaves in place still verifies (a resumable checkpoint is never refused for our own crash)."""
    run_dir = Path(run_dir)
    digest = {}
    def write_and_hash(tmp):
        write(tmp)
        digest["new"] = sha256(tmp)
        table = _hashes(run_dir)
        old = table.get(name, [])
        _write_hashes(run_dir, {**table, name: [digest["new"], *([old] if isinstance(old, str) else old)]})
    save_atomic(write_and_hash, run_dir / name)
    _write_hashes(run_dir, {**_hashes(run_dir), name: [digest["new"]]})


def verify_hash(run_dir, name: str) -> Path:
    """`run_dir/name` if its SHA-256 matches the one recorded when it was written; one `RunDirError` line otherwise.

    Unpickling runs code: a pickle is only ever loaded after this check."""
    run_dir = Path(run_dir)
    f = run_dir / name
    if not f.exists(): raise RunDirError(f"run dir {run_dir}: missing {name}")
    want = _hashes(run_dir).get(name)
    if not want:
        raise RunDirError(f"{f} has no recorded SHA-256 in {HASHES}, so it is not loaded (unpickling runs code); "
                          f"retrain the run, or record it with `cskd-fastai trust {run_dir}` if you made the file yourself")
    if sha256(f) not in ([want] if isinstance(want, str) else want):
        raise RunDirError(f"{f} does not match the SHA-256 recorded when it was written (changed, truncated or "
                          f"replaced since), so it is not loaded; restore the original or retrain the run")
    return f


def load_checkpoint(run_dir) -> dict:
    "The run's checkpoint (model, optimizer, RNG states), after its hash is verified."
    import torch
    f = verify_hash(run_dir, CHECKPOINT)
    try: return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RunDirError(f"cannot read {f} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                          f"delete the run directory and retrain") from None


# ---- one writer per run directory --------------------------------------------------------------------------
@contextmanager
def run_lock(run_dir) -> Iterator[Path]:
    """Hold an exclusive lock on `run_dir` (created if needed) for as long as the block runs.

    The lock is an `flock` on `run_dir/.lock`, which holds the owner's pid for the error message. The kernel
    releases it when its process exits, however it exits, so a lock left by a killed process is stale by
    construction and is simply taken over."""
    import fcntl
    import socket
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"run dir {run_dir} is being written by {owner}; wait for it to finish, or "
                                 f"train into another --out") from None
        try: same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError: same = False
        if same: break
        os.close(fd)   # the previous owner removed the file between our open and our lock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield run_dir
    finally:
        try: path.unlink()
        except FileNotFoundError: pass
        os.close(fd)


@dataclass
class Run:
    path: Path
    recipe: dict
    metrics: dict

    @property
    def facts(self) -> dict: return self.metrics.get("facts", {})
    @property
    def label(self) -> str: return self.facts.get("label") or self.path.name


def is_done(path) -> bool: return (Path(path) / DONE).exists()


def save_metrics(run_dir, metrics: dict) -> None:
    "Write metrics.json atomically (`{'valid': ..., 'test': ..., 'facts': ...}`)."
    save_atomic(lambda t: Path(t).write_text(json.dumps(metrics, indent=2)), Path(run_dir) / METRICS)


def mark_done(run_dir) -> None:
    "Write DONE (the finishing time): the last file of a run, after which readers treat it as finished."
    (Path(run_dir) / DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def _need(path: Path, name: str, what: str) -> Path:
    f = path / name
    if not f.exists():
        raise RunDirError(f"run dir {path}: missing {name} ({what}); train it with `cskd-fastai train` "
                          f"or pass a finished run directory")
    return f


def load_run(path) -> Run:
    "Read a finished run's recipe and metrics; an unfinished run (no DONE) is refused with one line."
    path = Path(path)
    if not path.is_dir(): raise RunDirError(f"run dir {path} does not exist")
    metrics = read_json(_need(path, METRICS, "the final metrics"))
    if not is_done(path):
        raise RunDirError(f"run dir {path} is unfinished (no {DONE}); finish it with `cskd-fastai train RECIPE "
                          f"--resume` first")
    recipe = read_yaml(_need(path, RECIPE, "the resolved recipe"))
    if not isinstance(metrics, dict) or not isinstance(recipe, dict):
        raise RunDirError(f"run dir {path}: {METRICS} or {RECIPE} is not a mapping; retrain the run")
    return Run(path, recipe, metrics)


def save_logits(run_dir, splits: dict, classes) -> Path:
    """Write `logits.pt` atomically: `splits` maps 'valid'/'test' to (logits, labels); `classes` names the logits'
    columns in order. The one writer of the format `load_logits` reads."""
    d = {name: {"logits": z.detach().float().cpu(), "labels": y.detach().long().cpu()} for name, (z, y) in splits.items()}
    d["classes"] = [str(c) for c in classes]
    save_atomic(lambda t: torch.save(d, t), Path(run_dir) / LOGITS)
    return Path(run_dir) / LOGITS


def load_logits(path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor, list]:
    "(logits, labels, classes) stored for `split` ('valid' or 'test')."
    f = _need(Path(path), LOGITS, "stored logits")
    try: d = torch.load(f, map_location="cpu", weights_only=True)   # tensors and lists only: no code runs
    except Exception as e:
        raise RunDirError(f"cannot read {f} ({type(e).__name__}: {' '.join(str(e).split())[:160]}); restore it "
                          f"or retrain the run") from None
    if not isinstance(d, dict): raise RunDirError(f"{f} is not a logits file of `cskd-fastai train`")
    if split not in d: raise RunDirError(f"run dir {path}: {LOGITS} has no {split!r} split (has {sorted(d)})")
    return d[split]["logits"].float(), d[split]["labels"].long(), list(d.get("classes", []))


def load_run_learner(path, cpu: bool = True):
    """`load_learner` on a run's export once its SHA-256 matches the recorded one, with import problems reported
    instead of fastai's `UnboundLocalError`."""
    import warnings
    from fastai.learner import load_learner
    import cskd_fastai.models, cskd_fastai.transforms  # noqa: F401  (classes the pickle may reference)
    _need(Path(path), EXPORT, "the exported learner")
    f = verify_hash(path, EXPORT)
    try:
        with warnings.catch_warnings():   # fastai's "insecure pickle" warning: the hash check above is the answer
            warnings.filterwarnings("ignore", message=".*load_learner.*pickle", category=UserWarning)
            return load_learner(f, cpu=cpu)
    except UnboundLocalError as e:  # fastai hides the real ImportError/AttributeError behind this
        cause = e.__context__ or e
        raise RunDirError(f"cannot load {f}: {type(cause).__name__}: {cause}; install the packages "
                          f"the run was trained with (see env.json)") from None
    except Exception as e:
        raise RunDirError(f"cannot load {f}: {type(e).__name__}: {' '.join(str(e).split())[:200]}; retrain the run "
                          f"or install the packages it was trained with (see env.json)") from None


def find_runs(paths: Iterable) -> list[Path]:
    "Every finished run directory at or below `paths` (sorted, unique)."
    found = []
    for p in map(Path, paths):
        if not p.exists(): raise RunDirError(f"{p} does not exist")
        cands = [p] if (p / METRICS).exists() else sorted(m.parent for m in p.rglob(METRICS))
        found += [c for c in cands if is_done(c)]
    return sorted(dict.fromkeys(found))


def finished_runs(paths: Iterable) -> list[Path]:
    "`find_runs`, failing with one line when there is none."
    paths = list(paths)
    runs = find_runs(paths)
    if not runs: raise RunDirError(f"no finished run (a directory with metrics.json and DONE) under {list(map(str, paths))}")
    return runs


def archive_run(path, dest) -> Path:
    """Copy a finished run's small files (`ARCHIVED`) to `dest/<recipe>/<label>/seed<k>`; returns that directory.

    Never overwrites: an existing archived run of the same recipe, label and seed is an error (archive elsewhere or
    remove it first), so a committed record is not replaced by accident."""
    import shutil
    path, dest = Path(path), Path(dest)
    run = load_run(path)
    for name in (RECIPE, ENV, HISTORY, METRICS, LOGITS): _need(path, name, "archived with the run")
    f = run.facts
    if not all(k in f for k in ("recipe", "label", "seed")):
        raise RunDirError(f"run dir {path}: {METRICS} lacks the facts recipe/label/seed; retrain it with `cskd-fastai train`")
    parts = [str(f["recipe"]), str(f["label"]), f"seed{f['seed']}"]
    bad = [p for p in parts if safe_component(p) is None]
    target = dest.joinpath(*parts)
    if bad or not target.resolve().is_relative_to(dest.resolve()):
        raise RunDirError(f"run dir {path}: {METRICS} names {bad[0] if bad else '/'.join(parts)!r}, which would be "
                          f"archived outside {dest}; refusing (edit the facts or retrain the run)")
    if target.resolve() == path.resolve(): raise RunDirError(f"run dir {path} is already in {dest}")
    if target.exists(): raise RunDirError(f"{target} already exists; remove it or archive to another --to folder")
    target.mkdir(parents=True)
    for name in ARCHIVED:
        if (path / name).exists(): shutil.copy2(path / name, target / name)   # the PNGs are optional
    return target
