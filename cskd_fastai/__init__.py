"""cskd-fastai: class-wise self-knowledge distillation (Yun et al., CVPR 2020) as a one-line fastai addition.

The public names import lazily (PEP 562): `import cskd_fastai` and the command line (`cskd-fastai --help`,
`--version`, argument errors) answer without importing torch or fastai; `from cskd_fastai import CSKD` imports
what it needs on first use. Importing changes nothing outside the package (no warning filters, no patches): the
command line silences fastai's import-time torch.jit warning for itself, and progress bars are made quiet in
non-terminal output when a fit of ours starts (`progress.quiet_fill_check`)."""
__version__ = "0.1.0"

import importlib as _importlib

_WHERE = {"PairedDL": "loaders", "paired_dls": "loaders", "dataset_labels": "loaders", "check_classes": "loaders",
          "class_wise_kd": "losses", "CSKD": "callbacks", "warmup_schedule": "callbacks", "TeacherKD": "callbacks",
          "cskd_learner": "learner", "plain_learner": "learner", "CSKDLearner": "learner",
          "cskd_metrics": "metrics", "classification_metrics": "metrics", "PSKD": "callbacks", "TfKDLoss": "losses",
          "IndexedDL": "loaders", "open_run": "run_model", "conformal_sets": "sets", "ReleaseMemory": "callbacks", "StoredCSKD": "callbacks"}

__all__ = [*_WHERE, "__version__"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(_importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value   # once imported, a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__(): return sorted([*globals(), *_WHERE])
