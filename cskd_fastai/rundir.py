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
    DONE             written last: a run without it is unfinished

An *archived* run (`archive_run`, `cskd-fastai archive`) keeps only the small files that `compare` and the docs
scripts (temperature scaling, diagnostics, paired tests) read: recipe, env, history, metrics, logits and DONE.
Committed under `docs/evidence/`, it lets seeds trained in different sessions or on different machines be compared
as one table, without the export and checkpoint (over 100 MB for a ResNet-18 run; `eval`, `analyze` and the demo
need those).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import yaml

__all__ = ["RunDirError", "Run", "load_run", "load_logits", "load_run_learner", "find_runs", "finished_runs", "is_done", "archive_run", "ARCHIVED"]

RECIPE, ENV, HISTORY, METRICS, LOGITS, EXPORT, CHECKPOINT, DONE = (
    "recipe.yaml", "env.json", "history.csv", "metrics.json", "logits.pt", "export.pkl", "checkpoint.pth", "DONE")


ARCHIVED = (RECIPE, ENV, HISTORY, METRICS, LOGITS, DONE)   # DONE last: a partial copy is never a finished run


class RunDirError(ValueError):
    "A run directory is missing or incomplete (one-line message naming the file)."


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


def _need(path: Path, name: str, what: str) -> Path:
    f = path / name
    if not f.exists():
        raise RunDirError(f"run dir {path}: missing {name} ({what}); train it with `cskd-fastai train` "
                          f"or pass a finished run directory")
    return f


def load_run(path) -> Run:
    "Read a finished run's recipe and metrics."
    path = Path(path)
    if not path.is_dir(): raise RunDirError(f"run dir {path} does not exist")
    metrics = json.loads(_need(path, METRICS, "the final metrics").read_text())
    recipe = yaml.safe_load(_need(path, RECIPE, "the resolved recipe").read_text())
    return Run(path, recipe, metrics)


def load_logits(path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor, list]:
    "(logits, labels, classes) stored for `split` ('valid' or 'test')."
    d = torch.load(_need(Path(path), LOGITS, "stored logits"), map_location="cpu", weights_only=True)
    if split not in d: raise RunDirError(f"run dir {path}: {LOGITS} has no {split!r} split (has {sorted(d)})")
    return d[split]["logits"].float(), d[split]["labels"].long(), list(d.get("classes", []))


def load_run_learner(path, cpu: bool = True):
    "`load_learner` on a run's export, with import problems reported instead of fastai's `UnboundLocalError`."
    from fastai.learner import load_learner
    import cskd_fastai.models, cskd_fastai.transforms  # noqa: F401  (classes the pickle may reference)
    f = _need(Path(path), EXPORT, "the exported learner")
    try:
        return load_learner(f, cpu=cpu)
    except UnboundLocalError as e:  # fastai hides the real ImportError/AttributeError behind this
        cause = e.__context__ or e
        raise RunDirError(f"cannot load {f}: {type(cause).__name__}: {cause}; install the packages "
                          f"the run was trained with (see env.json)") from None
    except Exception as e:
        raise RunDirError(f"cannot load {f}: {type(e).__name__}: {e}") from None


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
    if not is_done(path): raise RunDirError(f"run dir {path} is unfinished (no {DONE}); finish it with --resume first")
    for name in ARCHIVED: _need(path, name, "archived with the run")
    f = run.facts
    if not all(k in f for k in ("recipe", "label", "seed")):
        raise RunDirError(f"run dir {path}: {METRICS} lacks the facts recipe/label/seed; retrain it with `cskd-fastai train`")
    target = dest / f["recipe"] / f["label"] / f"seed{f['seed']}"
    if target.resolve() == path.resolve(): raise RunDirError(f"run dir {path} is already in {dest}")
    if target.exists(): raise RunDirError(f"{target} already exists; remove it or archive to another --to folder")
    target.mkdir(parents=True)
    for name in ARCHIVED: shutil.copy2(path / name, target / name)
    return target
