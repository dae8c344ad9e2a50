"""The Gradio demo: calibrated predictions of trained runs side by side (`cskd-fastai demo RUN_DIR ...`).

Pure functions first, testable without a server:

    >>> entries = load_models(["runs/cub/ce/seed0", "runs/cub/cskd-lam1-T4/seed0"])
    >>> predict(entries, "bird.jpg", temps=[e.temperature for e in entries], k=5)   # one {class: prob} per run
    >>> calibration_numbers(entries[1], T=1.3)                                       # ECE/NLL before and after

then `build_demo(run_dirs) -> gr.Blocks` and `launch(run_dirs, host="127.0.0.1", port=None)`.

Temperature scaling divides the *raw logits* by T before the softmax, so predictions here come from the learner's
model on the learner's own test pipeline (`dls.test_dl`), never from `learn.predict`'s probabilities.

Safety: only the run directories named by the operator are unpickled (`export.pkl` is a pickle, and unpickling runs
arbitrary code); uploads are only ever decoded as images by Pillow, restricted to a few raster formats and a pixel
budget. Gradio imports lazily, so the pure functions and the command-line errors don't pay for it.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image
from torch import Tensor

from .images import IMAGE_FORMATS, MAX_PIXELS, MAX_SIDE, one_line, safe_image
from .calibration import (MIN_ERRORS, TemperatureFit, apply_temperature, confidence_histogram, fit_temperature_checked,
                          reliability_diagram)
from .metrics.functional import calibration_error, nll
from .rundir import EXAMPLES, RunDirError, load_logits, load_run, load_run_learner, read_examples
from .speed import channels_last

__all__ = ["ModelEntry", "load_models", "load_model", "safe_image", "predict_logits", "predict", "top_k",
           "calibration_numbers", "calibration_figure", "run_facts", "example_images", "build_demo", "launch",
           "MAX_PIXELS", "MAX_SIDE", "IMAGE_FORMATS"]

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


def load_model(path) -> ModelEntry:
    "Load one finished run: metrics, recipe, valid/test logits, exported learner, and T fitted on the valid logits."
    path = Path(path)
    run = load_run(path)
    vz, vy, _ = load_logits(path, "valid")
    tz, ty, stored_classes = load_logits(path, "test")
    learn = _for_inference(load_run_learner(path))
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
    if not fit.trusted:
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


def predict_logits(entry: ModelEntry, image) -> Tensor:
    "Raw logits `(C,)` for one image, through the learner's own test pipeline (`dls.test_dl`) and model, in eval mode."
    ok = isinstance(image, Image.Image) and image.mode == "RGB" and max(image.size) <= MAX_SIDE
    img = image if ok else safe_image(image)  # `predict` decodes once and hands the same RGB image to every model
    learn = entry.learn
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


def _split(entry: ModelEntry, split: str) -> tuple[Tensor, Tensor]:
    zy = getattr(entry, split)
    if zy is None: raise ValueError(f"{entry.label}: no stored {split} logits")
    return zy


def calibration_numbers(entry: ModelEntry, T: float | None = None) -> dict:
    "Test-set ECE and NLL before (T = 1) and after scaling by `T` (None = the entry's default T), with T and N."
    T = entry.temperature if T is None else float(T)
    if not (math.isfinite(T) and T > 0): raise ValueError(f"expected a finite temperature T > 0, got {T}")
    z, y = _split(entry, "test")
    return {"T": T, "n": int(z.shape[0]),
            "ece_before": float(calibration_error(z, y)), "nll_before": float(nll(z, y)),
            "ece_after": float(calibration_error(z / T, y)), "nll_after": float(nll(z / T, y))}


def calibration_figure(entry: ModelEntry, T: float | None = None):
    "Reliability diagrams before (T = 1) and after scaling by `T`, and the confidence histogram at `T` (a `Figure`)."
    from matplotlib.figure import Figure  # pyplot-free: no global state shared between server threads
    T = entry.temperature if T is None else float(T)
    z, y = _split(entry, "test")
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    a0, a1, a2 = fig.subplots(1, 3)
    reliability_diagram(z, y, ax=a0, title="Before: T = 1")
    reliability_diagram(z / T, y, ax=a1, title=f"After: T = {T:.3g}")
    confidence_histogram(z / T, y, ax=a2)
    a2.set_title(f"Confidence at T = {T:.3g}")
    fig.suptitle(f"{entry.label}: test set ({z.shape[0]} images)")
    return fig


# ---------------------------------------------------------------------------------------------------------------
# examples from the run's test set


def example_images(entries: Sequence[ModelEntry], n: int = 6) -> list[tuple[Path, str]]:
    """Up to `n` example images as `(png_path, true_class)`: the test thumbnails `train` stored inside each run
    directory (`rundir.read_examples`). Nothing else is opened: not a data root named in a file, not a pickle."""
    found, seen = [], set()
    for e in entries:
        if e.path is None: continue
        for p, cls in read_examples(e.path):
            if len(found) >= n: return found
            key = (cls, p.read_bytes())
            if key in seen: continue   # two runs of one recipe store the same thumbnails
            seen.add(key); found.append((p, cls))
    return found


def _inside(path, folders: Sequence[Path]) -> bool:
    "Whether `path` (symlinks resolved) lies inside one of `folders`."
    try: real = Path(os.path.realpath(path))
    except (OSError, ValueError): return False
    return any(real.is_relative_to(Path(os.path.realpath(f))) for f in folders)


# ---------------------------------------------------------------------------------------------------------------
# text shown in the app


def _fmt(v, spec: str = "") -> str:
    if v is None: return "—"
    try: return format(v, spec) if spec else str(v)
    except (TypeError, ValueError): return str(v)


def _fitted_text(entry: ModelEntry, why: bool = False) -> str:
    T = entry.fitted_temperature
    if T is None: return "—"
    if entry.degenerate_fit: return f"{T:.3g}, not trusted, T = 1 used" + (f" ({entry.fit.reason})" if why else "")
    return f"{T:.3f}"


def facts_markdown(entry: ModelEntry) -> str:
    "The run facts as a small Markdown table."
    f = entry.facts
    rows = [("dataset", _fmt(f.get("dataset"))), ("model", _fmt(f.get("model"))), ("method", _fmt(f.get("method"))),
            ("λ", _fmt(f.get("lam"), "g")), ("KD temperature", _fmt(f.get("temp"), "g")),
            ("epochs", _fmt(f.get("epochs"))), ("test top-1 error", _fmt(f.get("test_top1_err"), ".2%")),
            ("fitted T (valid NLL)", _fitted_text(entry, why=True))]
    return "| run fact | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def calibration_markdown(entry: ModelEntry, T: float | None = None) -> str:
    "ECE and NLL on the test set before and after temperature scaling, as Markdown."
    c = calibration_numbers(entry, T)
    return (f"**{entry.label}** — test set, {c['n']} images\n\n"
            f"| | T = 1 | T = {c['T']:.3g} |\n|---|---|---|\n"
            f"| ECE | {c['ece_before']:.2%} | {c['ece_after']:.2%} |\n"
            f"| NLL | {c['nll_before']:.4f} | {c['nll_after']:.4f} |")


def fmt_prob(p: float) -> str:
    "A probability as a percentage with useful precision: 99.7%, 0.3%, and '<0.1%' / '>99.9%' at the ends."
    p = float(p)
    if p < 0.0005: return "<0.1%"
    if p > 0.9995: return ">99.9%"
    return f"{100 * p:.1f}%"


def unusual_confidence(entry: ModelEntry, logits: Tensor, T: float, q: float = 0.01) -> tuple[bool, float] | None:
    """(is the top-class confidence at `T` below the `q` quantile of the validation images' at `T`?, that quantile);
    None without stored validation logits. A low confidence compared with the training distribution's images
    is a cheap hint that the input is unlike them (it cannot prove that an input is in-distribution)."""
    if entry.valid is None: return None
    ref = apply_temperature(entry.valid[0], T).amax(1)
    floor = float(torch.quantile(ref.double(), q))
    return float(apply_temperature(logits, T).max()) < floor, floor


def confidence_markdown(entry: ModelEntry, logits: Tensor, T: float, k: int = 5, true_class: str | None = None) -> str:
    """The top-`k` probabilities at `T` with useful precision, the top class's raw (T = 1) confidence, the true
    class of an example, and a hint when the confidence is unusually low for this model."""
    p_T, p_1 = apply_temperature(logits, T), apply_temperature(logits, 1.0)
    i = int(p_T.argmax())
    lines = [f"Top class **{entry.classes[i]}**: {fmt_prob(p_T[i])} at T = {T:.3g} ({fmt_prob(p_1[i])} at T = 1)"]
    if true_class is not None:
        lines.append(f"True class: **{true_class}** — " + ("right" if entry.classes[i] == true_class else "wrong"))
    flag = unusual_confidence(entry, logits, T)
    if flag and flag[0]:
        lines.append(f"⚠ Unlike the training data? The top-class confidence is below what 99% of this model's "
                     f"validation images get ({fmt_prob(flag[1])} at this T).")
    top = p_T.topk(min(int(k), len(entry.classes)))
    lines += ["", "| class | probability | |", "|---|---:|:---|"]
    lines += [f"| {entry.classes[int(c)]} | {fmt_prob(v)} | `{'█' * round(20 * float(v)) or '▏'}` |"
              for v, c in zip(top.values, top.indices)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# the Gradio app


REFUSED = "<refused: not an uploaded file>"
REFUSAL = ("only images uploaded to this app, or its examples, are read; upload the image (the API's "
           "/gradio_api/upload) and pass the path it returns")


def _guard_input(image, allowed: Sequence[Path]) -> None:
    """Check an image input's payload before gradio touches it: only files inside Gradio's upload cache or
    `allowed` (the runs' example folders) are read; anything else (a server path an API client made up) becomes
    `REFUSED`, whether or not the path exists. Uploads gradio's own decoding rejects are handed on as their path,
    so that `safe_image` says what is wrong in one line (gradio would show a bare "Error")."""
    from gradio.utils import get_upload_folder
    # wrapped on the instance: subclassing a gradio component makes gradio write a .pyi stub next to this module
    stock = image.preprocess
    folders = [Path(get_upload_folder()), *allowed]

    def preprocess(payload):
        if payload is None: return None
        path = getattr(payload, "path", None)
        if not path or not _inside(path, folders): return REFUSED
        try: return stock(payload)
        except Exception: return str(path)
    image.preprocess = preprocess


def _as_entries(run_dirs) -> list[ModelEntry]:
    items = list(run_dirs)
    if items and all(isinstance(e, ModelEntry) for e in items): return items
    return load_models(items)


def build_demo(run_dirs: Sequence, k: int = 5, n_examples: int = 6):
    "The Gradio Blocks app for these run directories (or already loaded `ModelEntry`s); doesn't start a server."
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the demo runs offline: no telemetry calls
    import gradio as gr

    entries = _as_entries(run_dirs)
    n = len(entries)
    max_k = max(min(10, len(e.classes)) for e in entries)
    examples = example_images(entries, n_examples)
    example_dirs = [e.path / EXAMPLES for e in entries if e.path is not None]
    # gradio hands an example over as a copy in its cache: recognise it by content to show its true class
    example_class = {hashlib.sha1(p.read_bytes()).hexdigest(): c for p, c in examples}
    hint = "Upload an image (PNG, JPEG, GIF, BMP, WebP, TIFF) or pick an example."

    with gr.Blocks(title="CS-KD: calibrated predictions", analytics_enabled=False) as demo:
        gr.Markdown("# Class-wise self-knowledge distillation: calibrated predictions side by side\n"
                    "Each model's probabilities are `softmax(logits / T)`; T starts at the temperature fitted on "
                    "its validation logits (NLL, LBFGS) where the validation split supports it (at least "
                    f"{MIN_ERRORS} errors and a cross-validated NLL gain), else at 1 (the run facts say why). The "
                    "sliders set log₁₀ T by hand, from 1/30 to 30 times the default.")
        logits_state = gr.State(None)
        labels, confs, temps, resets, plots, nums = [], [], [], [], [], []
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                image = gr.Image(type="filepath", image_mode=None, label="Image", height=300,
                                 sources=["upload", "clipboard"], elem_id="image-input")
                _guard_input(image, example_dirs)
                if examples:
                    gr.Examples([[str(p)] for p, _ in examples], inputs=image, label="Examples from the test set",
                                examples_per_page=12, elem_id="examples")
                k_slider = gr.Slider(1, max_k, value=min(k, max_k), step=1, label="Top-k classes shown")
                status = gr.Markdown(hint, elem_id="status")
            for i, e in enumerate(entries):
                with gr.Column(scale=1, min_width=240):
                    where = f"\n`…/{'/'.join(e.path.parts[-3:])}`" if e.path else ""  # recipe/label/seed
                    gr.Markdown(f"### {e.label}{where}")
                    # gr.Label rounds to whole percents (100% / 0%): it stays for the API, the page shows the
                    # probabilities with useful precision in the panel below it
                    labels.append(gr.Label(label=f"{e.label}: top-k probabilities", elem_id=f"label-{i}", visible=False))
                    confs.append(gr.Markdown("", elem_id=f"confidence-{i}"))
                    # log scale around the default: a fitted 0.06 is mid-slider, not pinned at a linear end
                    c = round(math.log10(e.temperature), 2)
                    temps.append(gr.Slider(c - 1.5, c + 1.5, value=c, step=0.01,
                                           label=f"log₁₀ T (default T = {e.temperature:.3g}; fitted: {_fitted_text(e)})",
                                           elem_id=f"temp-{i}"))
                    resets.append(gr.Button("Use the default T" if e.degenerate_fit else "Use the fitted T", size="sm"))
                    gr.Markdown(facts_markdown(e))
        gr.Markdown("## Calibration on the stored test logits")
        for i, e in enumerate(entries):
            with gr.Column():
                plots.append(gr.Plot(calibration_figure(e), format="png", show_label=False, elem_id=f"plot-{i}"))
                nums.append(gr.Markdown(calibration_markdown(e), elem_id=f"calibration-{i}"))

        def render(state, k, log_ts):
            if state is None: return [None] * n, [""] * n
            zs, truth = [torch.tensor(z) for z in state["logits"]], state.get("true")
            ts = [10.0 ** float(t) for t in log_ts]
            return ([top_k(apply_temperature(z, T), e.classes, int(k)) for e, z, T in zip(entries, zs, ts)],
                    [confidence_markdown(e, z, T, int(k), truth) for e, z, T in zip(entries, zs, ts)])

        def on_image(path, k, *log_ts):
            if path is None: return [hint] + [None] * n + [""] * n + [None]
            if path == REFUSED: return [f"**Cannot use this input:** {REFUSAL}"] + [None] * n + [""] * n + [None]
            try:
                img = safe_image(path)
                logits = [predict_logits(e, img).tolist() for e in entries]
            except ValueError as err:
                gr.Warning(str(err))
                return [f"**Cannot use this upload:** {err}"] + [None] * n + [""] * n + [None]
            except Exception as err:  # a model that fails on one input must not take the app down
                log.exception("prediction failed")
                return [f"**Prediction failed:** {type(err).__name__}: {one_line(err)}"] + [None] * n + [""] * n + [None]
            try: truth = example_class.get(hashlib.sha1(Path(path).read_bytes()).hexdigest())
            except OSError: truth = None
            state = {"logits": logits, "true": truth}
            labs, cs = render(state, k, log_ts)
            where = f" (an example from the test set, true class **{truth}**)" if truth else ""
            return [f"Predicted a {img.width}×{img.height} image{where}."] + labs + cs + [state]

        def on_controls(state, k, *log_ts):
            labs, cs = render(state, k, log_ts)
            return labs + cs

        image.change(on_image, [image, k_slider, *temps], [status, *labels, *confs, logits_state],
                     api_name="predict", trigger_mode="always_last")
        for ctl in (k_slider, *temps):
            ctl.change(on_controls, [logits_state, k_slider, *temps], [*labels, *confs],
                       api_visibility="private", trigger_mode="always_last")
        for i, e in enumerate(entries):
            temps[i].change(lambda t, e=e: (calibration_figure(e, 10.0 ** t), calibration_markdown(e, 10.0 ** t)),
                            temps[i], [plots[i], nums[i]], api_visibility="private", trigger_mode="always_last")
            resets[i].click(lambda c=round(math.log10(e.temperature), 2): c, None, temps[i], api_visibility="private")
    return demo


def launch(run_dirs: Sequence, host: str = "127.0.0.1", port: int | None = None, **launch_kwargs):
    "Load the runs, build the app and serve it on `host:port` (loopback unless told otherwise) until interrupted."
    entries = load_models(run_dirs)  # fails with one line before anything is served
    demo = build_demo(entries)
    if host not in LOOPBACK:
        print(f"warning: serving on {host}: anyone who can reach this machine can use the app")
    demo.queue(default_concurrency_limit=2)
    kw = dict(server_name=host, server_port=port, show_error=True, ssr_mode=False, max_file_size="50mb",
              footer_links=["api"])
    return demo.launch(**(kw | launch_kwargs))
