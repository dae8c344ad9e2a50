"""Archiving a finished run: its small files copied where a commit can keep them (docs/evidence)."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..checks import safe_component
from .files import DONE, ENV, HISTORY, LOGITS, METRICS, PNGS, RECIPE, RunDirError
from .layout import load_run, need_file

__all__ = ["ARCHIVED", "archive_run"]

# DONE last: a partial copy is never a finished run
ARCHIVED = (RECIPE, ENV, HISTORY, METRICS, LOGITS, *PNGS, DONE)


def archive_run(path, dest) -> Path:
    """Copy a finished run's small files (`ARCHIVED`) to `dest/<recipe>/<label>/seed<k>`; returns that directory.

    Never overwrites: an existing archived run of the same recipe, label and seed is an error (archive elsewhere or
    remove it first), so a committed record is not replaced by accident."""
    path, dest = Path(path), Path(dest)
    run = load_run(path)
    for name in (RECIPE, ENV, HISTORY, METRICS, LOGITS): need_file(path, name, "archived with the run")
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
