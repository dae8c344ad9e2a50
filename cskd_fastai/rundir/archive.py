"""Archiving a finished run: its small files copied where a commit can keep them (docs/evidence), its logits in the
compact `logits.npz` (`rundir.compact`), checked to give the same metrics as the float32 `logits.pt`. The plots are
not archived: they are drawn again from history.csv and the logits, and the ones the docs cite live in docs/img."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..checks import safe_component
from .compact import COMPACT_LOGITS, COMPACT_TOL, DEFAULT_TOL, load_compact, save_compact
from .files import DONE, ENV, HISTORY, LOGITS, METRICS, PNGS, RECIPE, TRUST, TRUST_LOGITS, RunDirError
from .layout import load_logits, load_run, need_file

__all__ = ["ARCHIVED", "archive_run", "compact_archived"]

# Copied as they are (and trust.json + trust_logits.npz where the recipe's `eval:` wrote them); logits.npz is
# written between these and DONE (last: a partial copy is never a finished run)
ARCHIVED = (RECIPE, ENV, HISTORY, METRICS)


def _compact_checked(src: Path, target: Path) -> None:
    """Write target/logits.npz from src's logits; raise if a split's metric moved by more than `COMPACT_TOL` allows."""
    from ..metrics.functional import classification_metrics
    import torch
    splits, classes = {}, []
    for s in ("valid", "test"):
        z, y, classes = load_logits(src, s)
        splits[s] = (z, y)
    save_compact(target, splits, classes)
    back = load_compact(target / COMPACT_LOGITS)
    for s, (z, y) in splits.items():
        a, b = classification_metrics(z, y), classification_metrics(torch.from_numpy(back[s][0]), y)
        worst = max(a, key=lambda k: abs(a[k] - b[k]) - COMPACT_TOL.get(k, DEFAULT_TOL))
        if abs(a[worst] - b[worst]) > COMPACT_TOL.get(worst, DEFAULT_TOL):
            (target / COMPACT_LOGITS).unlink()
            raise RunDirError(f"run dir {src}: the compact logits move {s} {worst} from {a[worst]:.6g} to "
                              f"{b[worst]:.6g}; not archived: keep this run directory itself as the record")


def compact_archived(path) -> bool:
    """Replace an archived run's `logits.pt` by the checked `logits.npz` and drop its plots, in place (runs archived
    before the compact form). False when there was nothing to do."""
    path = Path(path)
    if not (path / LOGITS).exists(): return False
    _compact_checked(path, path)
    (path / LOGITS).unlink()
    for name in PNGS: (path / name).unlink(missing_ok=True)
    return True


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
    try:
        for name in ARCHIVED: shutil.copy2(path / name, target / name)
        for name in (TRUST, TRUST_LOGITS):   # trust evaluations and their (already compact) logits, when run
            if (path / name).exists(): shutil.copy2(path / name, target / name)
        _compact_checked(path, target)
    except BaseException:
        shutil.rmtree(target)      # nothing half-archived is left to be mistaken for a record
        raise
    shutil.copy2(path / DONE, target / DONE)
    return target
