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
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .app_text import (COVERAGES, calibration_figure, calibration_markdown, confidence_markdown,  # noqa: F401
                       facts_markdown, fmt_prob, set_markdown, _fitted_text)
from .metrics.calibration import MIN_ERRORS, apply_temperature
from .images import IMAGE_FORMATS, MAX_PIXELS, MAX_SIDE, one_line, safe_image  # noqa: F401  (re-exported)
from .rundir.examples import EXAMPLES
from .serving import (ModelEntry, inside_folders, stored_split, calibration_numbers, example_images, load_model,  # noqa: F401
                      load_models, predict, predict_logits, run_facts, top_k, unusual_confidence)

__all__ = ["ModelEntry", "load_models", "load_model", "safe_image", "predict_logits", "predict", "top_k",
           "calibration_numbers", "calibration_figure", "run_facts", "example_images", "build_demo", "launch",
           "MAX_PIXELS", "MAX_SIDE", "IMAGE_FORMATS"]

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
        if not path or not inside_folders(path, folders): return REFUSED
        try: return stock(payload)
        except Exception: return str(path)
    image.preprocess = preprocess


def _as_entries(run_dirs) -> list[ModelEntry]:
    items = list(run_dirs)
    if items and all(isinstance(e, ModelEntry) for e in items): return items
    return load_models(items)


def applied_T(entry: ModelEntry, log_t) -> float:
    """The temperature a log₁₀ T slider value stands for: the run's exact default T while the slider sits on it (the
    slider moves in 0.01 steps: 10^round(log₁₀ 0.9, 2) would be 0.891), else 10^value."""
    t = float(log_t)
    return entry.temperature if abs(t - round(math.log10(entry.temperature), 2)) < 1e-9 else 10.0 ** t


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
                cov = gr.Radio(list(COVERAGES), value="90%", label="Prediction set (conformal, calibrated on the "
                               "validation split)", elem_id="coverage")
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

        def render(state, k, coverage, log_ts):
            if state is None: return [None] * n, [""] * n
            zs, truth = [torch.tensor(z) for z in state["logits"]], state.get("true")
            ts = [applied_T(e, t) for e, t in zip(entries, log_ts)]
            return ([top_k(apply_temperature(z, T), e.classes, int(k)) for e, z, T in zip(entries, zs, ts)],
                    [confidence_markdown(e, z, T, int(k), truth) + "\n\n" + set_markdown(e, z, T, coverage)
                     for e, z, T in zip(entries, zs, ts)])

        def on_image(path, k, coverage, *log_ts):
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
            labs, cs = render(state, k, coverage, log_ts)
            where = f" (an example from the test set, true class **{truth}**)" if truth else ""
            return [f"Predicted a {img.width}×{img.height} image{where}."] + labs + cs + [state]

        def on_controls(state, k, coverage, *log_ts):
            labs, cs = render(state, k, coverage, log_ts)
            return labs + cs

        image.change(on_image, [image, k_slider, cov, *temps], [status, *labels, *confs, logits_state],
                     api_name="predict", trigger_mode="always_last")
        for ctl in (k_slider, cov, *temps):
            ctl.change(on_controls, [logits_state, k_slider, cov, *temps], [*labels, *confs],
                       api_visibility="private", trigger_mode="always_last")
        for i, e in enumerate(entries):
            temps[i].change(lambda t, e=e: (calibration_figure(e, applied_T(e, t)), calibration_markdown(e, applied_T(e, t))),
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
