"""A finished run's model without unpickling anything from its directory: the learner is rebuilt from the recorded
recipe (architecture, image size, augmentation's inference transforms, normalisation), and the weights and the
class list of their outputs come from `model.safetensors` (tensors only, hash-verified). A run directory copied in from
someone else can then be evaluated, served and distilled from without running its code: `export.pkl`, a pickle,
stays for users of fastai's `load_learner`, who must trust it.

Runs trained before the weights file existed have only `export.pkl`: they are loaded from it after its hash check
(`rundir.load_run_learner`), with a warning that says so."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .datasets import ImageDataset, ImageSplit
from .learner import plain_learner
from .pipeline import build_dls
from .recipe import recipe_of_run
from .rundir import WEIGHTS, RunDirError, load_run, load_run_learner, load_weights

__all__ = ["rebuild_learner", "teacher_from_run"]


def _placeholder_data(name: str, classes: list, size: int) -> ImageDataset:
    "Two blank images per class: enough for fastai to build the loaders whose inference transforms we need."
    blank = np.zeros((size, size, 3), np.uint8)
    labels = [c for c in range(len(classes)) for _ in range(2)]
    return ImageDataset(name, list(classes), ImageSplit([blank] * len(labels), labels), ImageSplit([blank], [0]))


def rebuild_learner(run_dir, cpu: bool = True):
    """The run's final model in a learner whose `dls.test_dl` applies the run's inference transforms, built from
    recipe.yaml, with the weights and class list of model.safetensors; no pickle is loaded."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if not (run_dir / WEIGHTS).exists():
        warnings.warn(f"{run_dir} has no {WEIGHTS} (trained before weight files existed): loading its export.pkl, a "
                      f"pickle, after its hash check; retrain it to serve it without unpickling", UserWarning, stacklevel=2)
        return load_run_learner(run_dir, cpu=cpu)
    recipe = recipe_of_run(run.recipe, str(Path(run_dir) / "recipe.yaml"))
    state, classes = load_weights(run_dir)   # the class names ride in the weights file, hashed with them
    if not classes: raise RunDirError(f"run dir {run_dir}: {WEIGHTS} names no classes; retrain the run")
    # the inference transforms depend on image size and augmentation only; valid_pct 0.5 splits the placeholders
    cfg = recipe.dataset.model_copy(update=dict(valid_pct=0.5, train_per_class=None))
    tc = recipe.train.model_copy(update=dict(cache="none", workers=0, bs=2, drop_last=False))
    dls = build_dls(_placeholder_data(cfg.name, classes, cfg.image_size), cfg, tc, recipe.seed, paired=False,
                    device="cpu")
    from .models import resolve_arch
    learn = plain_learner(dls, resolve_arch(recipe.model.arch, recipe.model.head), pretrained=False,
                          loss_func=recipe.method.loss_func())
    try: learn.model.load_state_dict(state)
    except RuntimeError as e:
        raise RunDirError(f"run dir {run_dir}: {WEIGHTS} does not fit the model its recipe.yaml describes "
                          f"({' '.join(str(e).split())[:160]}); restore the run's files or retrain it") from None
    learn.model.eval()
    return learn


def teacher_from_run(run_dir, **kwargs):
    "A `TeacherKD` (standard KD beside a method) from a finished run, rebuilt without unpickling."
    from .callbacks.teacher import TeacherKD
    learn = rebuild_learner(run_dir)
    return TeacherKD(learn.model, teacher_classes=[str(c) for c in learn.dls.vocab], **kwargs)
