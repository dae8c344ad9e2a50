"""Serving finished runs: load a run (metrics, stored logits, the hash-verified export, the temperature the
validation split supports), predict with it on images through the learner's own pipeline, and read the run's
stored example thumbnails. Used by the demo (`app.py`) and `cskd-fastai predict`; no UI here.

Temperature scaling divides the *raw logits* by T before the softmax, so predictions here come from the learner's
model on the learner's own test pipeline (`dls.test_dl`), never from `learn.predict`'s probabilities.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image
from torch import Tensor

from .metrics.calibration import TemperatureFit, apply_temperature, fit_temperature_checked
from .images import MAX_SIDE, safe_image
from .metrics.functional import calibration_error, nll
from .rundir.examples import read_examples
from .rebuild import rebuild_learner
from .rundir import RunDirError, load_logits, load_run
from .speed import channels_last

__all__ = ["ModelEntry", "load_models", "load_model", "predict_logits", "predict", "top_k", "calibration_numbers",
           "run_facts", "example_images", "unusual_confidence"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# loaded runs


@dataclass
class ModelEntry:
    """One loaded run: its learner, class names, temperature, facts and stored (valid, test) logits.

    `temperature` is the T applied by default: the temperature fitted on the valid logits where the validation
    data supports it (`calibration.fit_temperature_checked`: enough errors, and a cross-validated NLL gain), else 1;
    `fit` says which and why."""
    path: Path | None
    label: str
    learn: Any
    classes: list[str]
    temperature: float = 1.0
    facts: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    valid: tuple[Tensor, Tensor] | None = None  # (logits, labels) stored by `train`
    test: tuple[Tensor, Tensor] | None = None
    fit: TemperatureFit | None = None

    @property
    def fitted_temperature(self) -> float | None: return None if self.fit is None else self.fit.fitted

    def familiarity(self) -> dict | None:
        """The run's unfamiliar-image rule (`metrics.ood.familiarity_flag` on its validation logits at its T), computed
        once per (validation logits, T) instead of for every image; None without stored validation logits."""
        if self.valid is None: return None
        key = (id(self.valid[0]), self.temperature)
        if getattr(self, "_familiarity", (None, None))[0] != key:
            from .metrics.ood import familiarity_flag
            self._familiarity = (key, familiarity_flag(self.valid[0].numpy(), self.temperature))
        return self._familiarity[1]

    @property
    def degenerate_fit(self) -> bool:
        "Whether the fitted T is not applied because the validation data cannot support it (see `fit.reason`)."
        return self.fit is not None and not self.fit.trusted

    @classmethod
    def from_learner(cls, learn, label: str = "model") -> "ModelEntry":
        "An entry for a learner in memory (no run directory, no stored logits, T = 1): for benchmarks and notebooks."
        _for_inference(learn)
        return cls(None, label, learn, [str(c) for c in learn.dls.vocab])


def _for_inference(learn):
    """Eval mode, weights in channels_last. Why: on CPU, oneDNN's NHWC convolutions run ResNet-18 at 224px in ~26 ms
    instead of ~42 ms (bench/predict_latency.py) with fp32 numerics; only the memory layout changes, not the math."""
    learn.model.eval()
    learn.model.to(memory_format=torch.channels_last)
    return learn


def _first(*values):
    "The first value that is not None (or None)."
    return next((v for v in values if v is not None), None)


def run_facts(recipe: dict, metrics: dict) -> dict:
    "Dataset, model, method, λ, KD temperature, epochs and test top-1 error of a run, from metrics.json facts or its recipe."
    facts = metrics.get("facts", {}) or {}
    ds = recipe.get("dataset") or {}
    model = recipe.get("model") or {}
    methods = recipe.get("methods") or [{}]
    meth = methods[0] if isinstance(methods, list) and methods and isinstance(methods[0], dict) else {}
    train = recipe.get("train") or {}
    method = _first(facts.get("method"), meth.get("name"))
    return {
        "label": _first(facts.get("label"), meth.get("label")),
        "dataset": _first(facts.get("dataset"), ds.get("name") if isinstance(ds, dict) else ds),
        "model": _first(facts.get("model"), model.get("arch") if isinstance(model, dict) else model),
        "method": method,
        # a method's own hyperparameters come from the facts `train` records for it (None where it has none)
        "lam": facts.get("lam"),
        "temp": facts.get("temp"),
        "epochs": _first(facts.get("epochs"), train.get("epochs") if isinstance(train, dict) else None),
        "seed": _first(facts.get("seed"), (recipe.get("seeds") or [None])[0]),
        "test_top1_err": (metrics.get("test") or {}).get("top1_err"),
    }


def _vocab(learn, path: Path) -> list[str]:
    try: return [str(c) for c in learn.dls.vocab]
    except Exception as e:
        raise RunDirError(f"run dir {path}: the exported learner has no class vocabulary ({type(e).__name__}); "
                          f"the demo needs a classifier trained on categories") from None


def load_model(path, quiet_fit: bool = False) -> ModelEntry:
    "Load one finished run: metrics, recipe, valid/test logits, exported learner, and T fitted on the valid logits."
    path = Path(path)
    run = load_run(path)
    vz, vy, _ = load_logits(path, "valid")
    tz, ty, stored_classes = load_logits(path, "test")
    learn = _for_inference(rebuild_learner(path))   # recipe + model.safetensors: no pickle from the run dir
    classes = _vocab(learn, path)
    for split, z in (("valid", vz), ("test", tz)):
        if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] != len(classes):
            raise RunDirError(f"run dir {path}: logits.pt {split} logits have shape {tuple(z.shape)}, expected "
                              f"(N>0, {len(classes)}) for the learner's {len(classes)} classes")
    stored = [str(c) for c in stored_classes]
    if stored and sorted(stored) != sorted(classes):
        raise RunDirError(f"run dir {path}: logits.pt classes differ from the exported learner's vocabulary; "
                          f"the files come from different runs")
    # Same names in another order: runs trained before the vocabulary kept the loader's order stored the loader's
    # order there, while their logits and labels follow the (sorted) vocabulary. The vocabulary is the truth.
    try: fit = fit_temperature_checked(vz, vy)
    except ValueError as e: raise RunDirError(f"run dir {path}: cannot fit a temperature on the valid logits: {e}") from None
    facts = run_facts(run.recipe or {}, run.metrics or {})
    entry = ModelEntry(path, facts["label"] or path.name, learn, classes, fit.T, facts, run.recipe or {}, (vz, vy),
                       (tz, ty), fit=fit)
    if not fit.trusted and not quiet_fit:   # (quiet when the caller applies its own T: the note would not apply)
        log.warning("%s: the fitted T (%.3g) is not applied, T = 1 instead: %s", path, fit.fitted, fit.reason)
    return entry


def _unique_labels(entries: list[ModelEntry]) -> None:
    "Two runs shown side by side need distinct titles (e.g. two seeds of one method): add the folder name."
    labels = [e.label for e in entries]
    for i, e in enumerate(entries):
        if labels.count(e.label) > 1:
            e.label = f"{e.label} ({e.path.name if e.path else i})"
    labels = [e.label for e in entries]
    for i, e in enumerate(entries):
        if labels.count(e.label) > 1: e.label = f"{e.label} #{i + 1}"


def load_models(run_dirs: Iterable) -> list[ModelEntry]:
    "A `ModelEntry` per run directory, in order; a missing or incomplete one raises a one-line `RunDirError`."
    run_dirs = list(run_dirs)
    if not run_dirs: raise RunDirError("no run directory given; pass one or more finished runs of `cskd-fastai train`")
    entries = [load_model(p) for p in run_dirs]
    _unique_labels(entries)
    return entries


# ---------------------------------------------------------------------------------------------------------------
# predictions


def predict_logits(model, images, bs: int = 64) -> Tensor:
    """Raw logits of a `ModelEntry` or fastai `Learner` through the learner's own test pipeline (`dls.test_dl`) and
    model in eval mode: `(C,)` for one image (decoded safely unless it is already an RGB PIL image), `(N, C)` for a
    list of items (paths, arrays or images), batched by `bs`. The one implementation behind `eval`, `predict` and
    the demo."""
    learn = getattr(model, "learn", model)
    if isinstance(images, (list, tuple)):
        from fastcore.basics import noop
        dl = learn.dls.test_dl(list(images), bs=bs, num_workers=0)
        with learn.no_bar(), learn.no_logging():
            preds, _ = learn.get_preds(dl=dl, act=noop)
        return preds.float()
    ok = isinstance(images, Image.Image) and images.mode == "RGB" and max(images.size) <= MAX_SIDE
    img = images if ok else safe_image(images)  # `predict` decodes once and hands the same RGB image to every model
    dl = learn.dls.test_dl([img], num_workers=0)
    b = dl.one_batch()
    xb = b[:getattr(dl, "n_inp", 1)] if isinstance(b, (tuple, list)) else (b,)
    xb = tuple(channels_last(x) for x in xb)  # matches the weights' layout (`_for_inference`)
    learn.model.eval()  # `learn.predict` does the same; also covers a learner handed over in train mode
    with torch.inference_mode():
        out = learn.model(*xb)
    return out[0].detach().float().cpu().as_subclass(Tensor)  # plain Tensor, not fastai's TensorImage


def top_k(probs: Tensor, classes: Sequence[str], k: int) -> dict[str, float]:
    "The `k` most probable classes as `{name: prob}`, most probable first (k is capped at the number of classes)."
    if isinstance(k, bool) or int(k) != k or k < 1: raise ValueError(f"k must be a positive int, got {k!r}")
    p, idx = probs.float().topk(min(int(k), len(classes)))
    return {str(classes[i]): float(v) for v, i in zip(p.tolist(), idx.tolist())}


def _temps(entries: Sequence[ModelEntry], temps) -> list[float]:
    if temps is None: return [e.temperature for e in entries]
    temps = list(temps)
    if len(temps) != len(entries): raise ValueError(f"got {len(temps)} temperatures for {len(entries)} models")
    return [e.temperature if t is None else float(t) for e, t in zip(entries, temps)]


def predict(entries: Sequence[ModelEntry], image, temps: Sequence[float | None] | None = None,
            k: int = 5) -> list[dict[str, float]]:
    "Top-`k` `{class: prob}` of each model at its temperature (`temps`; None = each model's default, fitted T)."
    img = safe_image(image)  # decode once for all models
    return [top_k(apply_temperature(predict_logits(e, img), T), e.classes, k)
            for e, T in zip(entries, _temps(entries, temps))]


# ---------------------------------------------------------------------------------------------------------------
# calibration on the stored test logits


def stored_split(entry: ModelEntry, split: str) -> tuple[Tensor, Tensor]:
    zy = getattr(entry, split)
    if zy is None: raise ValueError(f"{entry.label}: no stored {split} logits")
    return zy


def calibration_numbers(entry: ModelEntry, T: float | None = None) -> dict:
    "Test-set ECE and NLL before (T = 1) and after scaling by `T` (None = the entry's default T), with T and N."
    T = entry.temperature if T is None else float(T)
    if not (math.isfinite(T) and T > 0): raise ValueError(f"expected a finite temperature T > 0, got {T}")
    z, y = stored_split(entry, "test")
    return {"T": T, "n": int(z.shape[0]),
            "ece_before": float(calibration_error(z, y)), "nll_before": float(nll(z, y)),
            "ece_after": float(calibration_error(z / T, y)), "nll_after": float(nll(z / T, y))}


# ---------------------------------------------------------------------------------------------------------------
# examples from the run's test set


def example_images(entries: Sequence[ModelEntry], n: int = 6) -> list[tuple[Path, str]]:
    """Up to `n` example images as `(png_path, true_class)`: the test thumbnails `train` stored inside each run
    directory (`examples.read_examples`). Nothing else is opened: not a data root named in a file, not a pickle."""
    found, seen = [], set()
    for e in entries:
        if e.path is None: continue
        for p, cls in read_examples(e.path):
            if len(found) >= n: return found
            key = (cls, p.read_bytes())
            if key in seen: continue   # two runs of one recipe store the same thumbnails
            seen.add(key); found.append((p, cls))
    return found


def inside_folders(path, folders: Sequence[Path]) -> bool:
    "Whether `path` (symlinks resolved) lies inside one of `folders`."
    try: real = Path(os.path.realpath(path))
    except (OSError, ValueError): return False
    return any(real.is_relative_to(Path(os.path.realpath(f))) for f in folders)


def unusual_confidence(entry: ModelEntry, logits: Tensor) -> tuple[bool, float] | None:
    """(is this image unfamiliar by the run's flag rule?, the rule's threshold on the max softmax at the run's T);
    None without stored validation logits. The rule (`metrics.ood.familiarity_flag`) is fixed on the validation
    split at 95% TPR and stored in metrics.json; it is recomputed here from the same stored logits, so runs trained
    before it existed get it too. A hint, not a proof: see `metrics.ood.FLAG_MEANING`."""
    from .metrics.ood import flagged
    flag = entry.familiarity()
    if flag is None: return None
    return bool(flagged(logits.detach().cpu().numpy(), flag)[0]), flag["threshold"]
