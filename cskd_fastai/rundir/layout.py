"""Reading a run directory: finished or not, its recipe and metrics, its stored logits, its exported learner, and
finding the finished runs below a folder; the writers of metrics.json, logits.pt and DONE."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from ..safeio import save_atomic
from .compact import COMPACT_LOGITS, load_compact
from .files import DONE, EXPORT, LOGITS, METRICS, RECIPE, RunDirError, read_json, read_verified, read_yaml

__all__ = ["Run", "load_run", "load_logits", "save_logits", "load_run_learner", "find_runs", "finished_runs", "is_done",
           "save_metrics", "mark_done", "need_file"]


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


def need_file(path: Path, name: str, what: str) -> Path:
    f = path / name
    if not f.exists():
        raise RunDirError(f"run dir {path}: missing {name} ({what}); train it with `cskd-fastai train` "
                          f"or pass a finished run directory")
    return f


def load_run(path) -> Run:
    "Read a finished run's recipe and metrics; an unfinished run (no DONE) is refused with one line."
    path = Path(path)
    if not path.is_dir(): raise RunDirError(f"run dir {path} does not exist")
    metrics = read_json(need_file(path, METRICS, "the final metrics"))
    if not is_done(path):
        raise RunDirError(f"run dir {path} is unfinished (no {DONE}); finish it with `cskd-fastai train RECIPE "
                          f"--resume` first")
    recipe = read_yaml(need_file(path, RECIPE, "the resolved recipe"))
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


def logits_file(path) -> str:
    "The name of the logits file `load_logits` reads in `path`: `logits.pt`, or an archived run's `logits.npz`."
    return COMPACT_LOGITS if not (Path(path) / LOGITS).exists() and (Path(path) / COMPACT_LOGITS).exists() else LOGITS


def load_logits(path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor, list]:
    """(logits, labels, classes) stored for `split` ('valid' or 'test'): a live run's `logits.pt`, or an archived
    run's `logits.npz` (`rundir.compact`) where that is all there is."""
    if logits_file(path) == COMPACT_LOGITS: return _load_compact_split(Path(path), split)
    f = need_file(Path(path), LOGITS, "stored logits")
    try: d = torch.load(f, map_location="cpu", weights_only=True)   # tensors and lists only: no code runs
    except Exception as e:
        raise RunDirError(f"cannot read {f} ({type(e).__name__}: {' '.join(str(e).split())[:160]}); restore it "
                          f"or retrain the run") from None
    if not isinstance(d, dict): raise RunDirError(f"{f} is not a logits file of `cskd-fastai train`")
    if split not in d: raise RunDirError(f"run dir {path}: {LOGITS} has no {split!r} split (has {sorted(d)})")
    return d[split]["logits"].float(), d[split]["labels"].long(), list(d.get("classes", []))


def _load_compact_split(path: Path, split: str):
    f = path / COMPACT_LOGITS
    try: d = load_compact(f)
    except Exception as e:
        raise RunDirError(f"cannot read {f} ({type(e).__name__}: {' '.join(str(e).split())[:160]}); restore it "
                          f"from git or retrain the run") from None
    if split not in d: raise RunDirError(f"run dir {path}: {COMPACT_LOGITS} has no {split!r} split")
    z, y = d[split]
    return torch.from_numpy(z), torch.from_numpy(y), d["classes"]


def load_run_learner(path, cpu: bool = True):
    """`load_learner` on a run's export once its SHA-256 matches the recorded one, with import problems reported
    instead of fastai's `UnboundLocalError`."""
    import warnings
    from fastai.learner import load_learner
    import cskd_fastai.models, cskd_fastai.transforms  # noqa: F401  (classes the pickle may reference)
    import io
    f = need_file(Path(path), EXPORT, "the exported learner")
    data = read_verified(path, EXPORT)   # hashed and unpickled from the same bytes: no swap in between
    try:
        with warnings.catch_warnings():   # fastai's "insecure pickle" warning: the hash check above is the answer
            warnings.filterwarnings("ignore", message=".*load_learner.*pickle", category=UserWarning)
            return load_learner(io.BytesIO(data), cpu=cpu)
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
