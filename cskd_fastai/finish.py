"""The end of a trained run (rank 0): the final evaluation of the valid and test splits, the run directory's
files (logits, export, examples, plots, metrics.json) and DONE last; and the environment a run records."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

from . import distributed as D
from . import rundir as R
from .datasets import ImageDataset
from .pipeline import build_dls
from .metrics import classification_metrics
from .metrics.selective import selective_metrics
from .recipe import Recipe
from .rundir.examples import write_examples

__all__ = ["environment", "final_eval", "finish_run", "split_metrics"]

# selective-prediction numbers kept in metrics.json beside the calibration ones (T = 1; `eval` prints them all)
SELECTIVE_KEPT = ("aurc", "e_aurc", "augrc")


def environment() -> dict:
    import fastai, torchvision
    from . import __version__
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except Exception: commit = None
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return dict(cskd_fastai=__version__, torch=torch.__version__, torchvision=torchvision.__version__,
                fastai=fastai.__version__, python=platform.python_version(), platform=platform.platform(),
                device=dev, git_commit=commit, argv=sys.argv, torch_threads=torch.get_num_threads(),
                world_size=D.world_size())


def final_eval(learn, data: ImageDataset) -> tuple[dict, dict]:
    "Metrics and (logits, labels) of the valid and test splits, columns in the dataset's class order."
    from fastcore.basics import noop
    vocab = [str(v) for v in learn.dls.vocab]
    if vocab != [str(c) for c in data.classes]:   # build_dls keeps the loader's order; anything else is a bug
        raise RuntimeError(f"the learner's vocabulary is not the dataset's class order ({vocab[:3]} vs {data.classes[:3]})")
    metrics, splits = {}, {}
    for name, idx in (("valid", 1), ("test", 2)):
        preds, targs = learn.get_preds(ds_idx=idx, act=noop)
        metrics[name] = split_metrics(preds, targs)
        splits[name] = (preds.float().cpu(), targs.long().cpu())
    return metrics, splits


def split_metrics(logits, labels) -> dict:
    "What metrics.json keeps per split (and `eval` recomputes): classification, calibration and `SELECTIVE_KEPT`."
    out = classification_metrics(logits, labels)
    out.update({k: v for k, v in selective_metrics(logits, labels).items() if k in SELECTIVE_KEPT})
    return out


def _flag(valid: tuple) -> dict:
    "The unfamiliar-image rule `predict` and the demo apply (`metrics.ood.familiarity_flag`), fixed on validation."
    from .metrics.calibration import fit_temperature_checked
    from .metrics.ood import familiarity_flag
    z, y = valid
    return familiarity_flag(z.numpy(), fit_temperature_checked(z, y).T)


def plots(run_dir: Path, test: tuple, title: str) -> None:
    import matplotlib; matplotlib.use("Agg")
    import pandas as pd
    from matplotlib.figure import Figure
    from .metrics.calibration import reliability_diagram
    ax = reliability_diagram(*test, title=f"{title} (test)")
    ax.figure.savefig(run_dir / "reliability.png", dpi=110, bbox_inches="tight")
    hist = pd.read_csv(run_dir / R.HISTORY)
    fig = Figure(figsize=(10, 3.6)); a1, a2 = fig.subplots(1, 2)
    for col in ("train_loss", "valid_loss", "train_ce", "train_kd"):
        if col in hist: a1.plot(hist["epoch"] + 1, hist[col], label=col)
    a1.set_xlabel("epoch"); a1.set_title("losses"); a1.legend()
    for col in ("top1_err", "ece"):
        if col in hist: a2.plot(hist["epoch"] + 1, hist[col], label=f"valid {col}")
    a2.set_xlabel("epoch"); a2.set_title("validation"); a2.legend()
    fig.savefig(run_dir / "curves.png", dpi=110, bbox_inches="tight")


def finish_run(recipe: Recipe, run_dir: Path, data: ImageDataset, learn, dls, n_train: int, wall: float,
                resuming: bool, world_size: int, log: Callable) -> dict:
    """Final evaluation, logits, export (hash recorded), examples, plots, metrics.json and DONE of a trained run
    (rank 0 only). A failure here (a full disk, say) keeps the checkpoint: `--resume` redoes only this part."""
    meth, tc = recipe.method, recipe.train
    selected = tc.epochs - 1
    if tc.select == "best_valid" and (run_dir / R.BEST).exists():
        learn.model.load_state_dict(R.load_hashed(run_dir, R.BEST, weights_only=True))   # hashed like the checkpoint
        selected = R.load_checkpoint(run_dir)["best"]["epoch"]
    metrics, splits = final_eval(learn, data)
    facts = dict(label=meth.run_label, recipe=recipe.name, dataset=recipe.dataset.name, model=recipe.model.arch,
                 method=meth.name, **meth.facts(), mix=meth.mix, seed=recipe.seed, epochs=tc.epochs, selected_epoch=selected + 1, select=tc.select,
                 schedule=tc.schedule, image_size=recipe.dataset.image_size, bs=tc.bs, lr=tc.lr,
                 n_train=n_train, n_valid=len(dls.valid_ds), n_test=len(dls.loaders[2].dataset),
                 wall_time_s=round(wall, 1), resumed=resuming, world_size=world_size)
    result = dict(valid=metrics["valid"], test=metrics["test"], facts=facts, ood_flag=_flag(splits["valid"]))
    R.save_logits(run_dir, splits, data.classes)
    if recipe.train.cache != "none":   # the export predicts on image files: give it the plain (decoding) pipeline
        learn.dls = build_dls(data, recipe.dataset, tc, recipe.seed, paired=False, device=dls.device)
    R.save_hashed(lambda t: learn.export(Path(t).resolve()), run_dir, R.EXPORT)
    R.save_weights(run_dir, D.unwrap(learn.model), data.classes)   # what eval/predict/demo load: no pickle
    write_examples(run_dir, data.test.items, data.test.labels, data.classes)
    try: plots(run_dir, splits["test"], meth.run_label)
    except OSError as e:
        msg = R.disk_full_message(run_dir / "reliability.png", e)
        raise OSError(e.errno, msg) if msg else e
    R.save_metrics(run_dir, result)
    R.mark_done(run_dir)
    t = result["test"]
    log(f"done {run_dir}: test top1_err={t['top1_err']:.4f} top5_err={t['top5_err']:.4f} "
        f"ece={t['ece']:.4f} nll={t['nll']:.4f} ({wall:.0f}s)")
    return result
