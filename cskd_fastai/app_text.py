"""What the demo shows for a run, as text and figures (no Gradio here): run facts, calibration numbers and plots,
the top-k probabilities at a temperature, and the conformal prediction set of an upload."""
from __future__ import annotations

import math

from torch import Tensor

from .metrics.calibration import MIN_ERRORS, apply_temperature, confidence_histogram, reliability_diagram
from .metrics.ood import FLAG_CAVEAT
from .serving import ModelEntry, calibration_numbers, stored_split, unusual_confidence
from .sets import SetPredictor

__all__ = ["calibration_figure", "facts_markdown", "calibration_markdown", "fmt_prob", "confidence_markdown",
           "set_markdown", "COVERAGES"]

COVERAGES = ("off", "80%", "90%", "95%")   # the demo's choices of prediction-set coverage


def calibration_figure(entry: ModelEntry, T: float | None = None):
    "Reliability diagrams before (T = 1) and after scaling by `T`, and the confidence histogram at `T` (a `Figure`)."
    from matplotlib.figure import Figure  # pyplot-free: no global state shared between server threads
    T = entry.temperature if T is None else float(T)
    z, y = stored_split(entry, "test")
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    a0, a1, a2 = fig.subplots(1, 3)
    reliability_diagram(z, y, ax=a0, title="Before: T = 1")
    reliability_diagram(z / T, y, ax=a1, title=f"After: T = {T:.3g}")
    confidence_histogram(z / T, y, ax=a2)
    a2.set_title(f"Confidence at T = {T:.3g}")
    fig.suptitle(f"{entry.label}: test set ({z.shape[0]} images)")
    return fig


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
    head = f"**{entry.label}** — test set, {c['n']} images\n\n"
    if abs(c["T"] - 1) < 1e-9:   # one column: scaling by 1 changes nothing
        return (head + "| | T = 1 (no scaling) |\n|---|---|\n"
                f"| ECE | {c['ece_before']:.2%} |\n| NLL | {c['nll_before']:.4f} |")
    return (head + f"| | T = 1 | T = {c['T']:.3g} |\n|---|---|---|\n"
            f"| ECE | {c['ece_before']:.2%} | {c['ece_after']:.2%} |\n"
            f"| NLL | {c['nll_before']:.4f} | {c['nll_after']:.4f} |")


def fmt_prob(p: float) -> str:
    "A probability as a percentage with useful precision: 99.7%, 0.3%, and '<0.1%' / '>99.9%' at the ends."
    p = float(p)
    if p < 0.0005: return "<0.1%"
    if p > 0.9995: return ">99.9%"
    return f"{100 * p:.1f}%"


def confidence_markdown(entry: ModelEntry, logits: Tensor, T: float, k: int = 5, true_class: str | None = None) -> str:
    """The top-`k` probabilities at `T` with useful precision, the top class's raw (T = 1) confidence, the true
    class of an example, and a hint when the confidence is unusually low for this model."""
    p_T, p_1 = apply_temperature(logits, T), apply_temperature(logits, 1.0)
    i = int(p_T.argmax())
    raw = f" ({fmt_prob(p_1[i])} at T = 1)" if abs(T - 1) > 1e-9 else ""   # no "(x at T = 1)" twice
    lines = [f"Top class **{entry.classes[i]}**: {fmt_prob(p_T[i])} at T = {T:.3g}{raw}"]
    if true_class is not None:
        lines.append(f"True class: **{true_class}** — " + ("right" if entry.classes[i] == true_class else "wrong"))
    flag = unusual_confidence(entry, logits)
    if flag and flag[0]:
        lines.append(f"⚠ Unfamiliar image: the top-class confidence at T = {entry.temperature:.3g} is below "
                     f"{fmt_prob(flag[1])}, what 95% of this model's validation images get: {FLAG_CAVEAT}.")
    top = p_T.topk(min(int(k), len(entry.classes)))
    lines += ["", "| class | probability | |", "|---|---:|:---|"]
    lines += [f"| {entry.classes[int(c)]} | {fmt_prob(v)} | `{'█' * round(20 * float(v)) or '▏'}` |"
              for v, c in zip(top.values, top.indices)]
    return "\n".join(lines)


def set_markdown(entry: ModelEntry, logits: Tensor, T: float, coverage: str) -> str:
    """The upload's conformal prediction set at `coverage` ('90%'; 'off': nothing), calibrated on the run's validation
    split at `T`, with one line on what it guarantees; a validation split too small for it says so (no set)."""
    if coverage in (None, "off"): return ""
    c = float(str(coverage).rstrip("%")) / 100
    try: sp = SetPredictor(entry, c, "lac", T=T)
    except ValueError as e: return f"**{coverage} prediction set:** not available: {e}"
    (s,) = sp.sets(logits[None])
    items = ", ".join(f"{cls} ({fmt_prob(p)})" for cls, p in s) or "empty (no class reaches the threshold)"
    return f"**{coverage} prediction set** ({len(s)} {'class' if len(s) == 1 else 'classes'}): {items}  \n_{sp.guarantee}_"
