"""`eval`: re-evaluate a run's exported learner on its recipe's test set (or another root)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .finish import split_metrics
from .recipe import recipe_of_run
from .metrics.calibration import fit_temperature_checked
from .rebuild import rebuild_learner
from .rundir import TRUST, RunDirError, load_logits, load_run
from .serving import predict_logits

__all__ = ["evaluate_run", "predict_logits", "write_trust"]


def evaluate_run(run_dir, data_root: Optional[str] = None, ood=None, ood_max: int = 2000,
                 shift: Optional[str] = None, shift_ref: Optional[str] = None, cache_dir: Optional[str] = None,
                 progress: bool = False, shift_max: Optional[int] = None, logits_out: Optional[dict] = None) -> dict:
    """Test metrics of the run's exported learner, recomputed from the images on disk, the coverage and size of
    its conformal prediction sets on them (`sets.run_conformal`: calibrated on the validation split), selective
    prediction at T = 1 and the fitted T, and with `ood` (a folder, a dataset name or 'holdout', or a list of them)
    how well it tells the test images from those (`unfamiliar.ood_report`, keyed by source); with `shift` (severities, e.g. '1-5') the metrics under the
    ImageNet-C corruptions (`shift.shift_report`, on at most `ood_max` test images), relative to a CE run's report
    `shift_ref` (a JSON file that `eval --shift` printed) where one is given. Given a dict, `logits_out` receives the
    OOD sets' logits ('ood': {source: logits}) and the corrupted images' ('shift': {condition: logits}, 'shift_labels')."""
    from .pipeline import load_data
    run = load_run(run_dir)
    recipe = recipe_of_run(run.recipe, str(Path(run_dir) / "recipe.yaml"))
    data = load_data(recipe.dataset, data_root)
    learn = rebuild_learner(run_dir)
    vocab = [str(v) for v in learn.dls.vocab]
    index = {c: i for i, c in enumerate(vocab)}
    missing = [str(c) for c in data.classes if str(c) not in index]
    if missing or len(vocab) != len(data.classes):
        raise RunDirError(f"the data at {data_root or recipe.dataset.root} has other classes than run {run_dir} "
                          f"({len(data.classes)} vs {len(vocab)}"
                          + (f"; e.g. {missing[0]!r} is not among the run's" if missing else "")
                          + "); pass the dataset the run was trained on")
    logits = predict_logits(learn, list(data.test.items))
    # labels by class *name*: the logits' columns follow the learner's vocabulary, whatever order the loader has
    labels = torch.tensor([index[str(data.classes[l])] for l in data.test.labels])
    # prediction sets calibrated on the stored validation logits (never test), at the temperature they support
    vz, vy, _ = load_logits(run_dir, "valid")
    T = fit_temperature_checked(vz, vy).T
    from .metrics.selective import selective_metrics
    from .sets import run_conformal
    out = dict(run=str(Path(run_dir)), n_test=len(labels), test=split_metrics(logits, labels),
               selective={"T=1": selective_metrics(logits.numpy(), labels.numpy()),
                          f"T={T:.3g} (fitted on valid)" if T != 1 else "T fitted (= 1)":
                              selective_metrics(logits.numpy(), labels.numpy(), T)},
               conformal=run_conformal((vz, vy), (logits, labels), T))
    for source in ([ood] if isinstance(ood, str) else ood or []):
        from .unfamiliar import draw, ood_items, ood_logits, ood_report
        if source == "holdout":   # the classes the recipe left out of training: near-OOD, same camera and domain
            held = load_data(recipe.dataset, data_root, held_out=True)
            items, what = draw(list(held.test.items), f"test images of the {len(held.classes)} held-out classes", ood_max)
        else: items, what = ood_items(source, n_max=ood_max)
        z_out, unreadable = ood_logits(learn, items)
        if logits_out is not None: logits_out.setdefault("ood", {})[source] = z_out
        out.setdefault("ood", {})[source] = dict(source=what, n_ood=len(z_out), unreadable=unreadable,
                                                 **ood_report(logits, vz, T, z_out))
    if shift is not None:
        out["shift"] = _shift(recipe, learn, list(data.test.items), labels, T, shift, shift_ref, shift_max or ood_max,
                              cache_dir, progress, logits_out)
    return out


def _shift(recipe, learn, items, labels, T, severities, ref, n_max, cache_dir, progress, logits_out=None) -> dict:
    "`shift.shift_report` on a seeded draw of at most `n_max` test images (+ `relative_errors` against `ref`)."
    import json
    from .cache import cache_side
    from .shift import default_cache_dir, parse_severities, relative_errors, shift_report
    from .unfamiliar import draw_index
    sev = parse_severities(severities)
    reference = None
    if ref is not None:
        try: reference = json.loads(Path(ref).read_text())
        except (OSError, ValueError) as e: raise ValueError(f"--shift-ref {ref}: not a JSON report of `eval --shift` ({e})") from None
        reference = reference.get("shift", reference)
    idx = draw_index(len(items), n_max)
    side = cache_side(recipe.dataset.image_size, recipe.train.augment)
    drawn = labels[torch.as_tensor(idx)]
    if logits_out is not None: logits_out.update(shift={}, shift_labels=drawn)
    rep = shift_report(lambda xs: predict_logits(learn, xs), [items[i] for i in idx], drawn, side, T, sev,
                       cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), progress=progress,
                       logits_out=logits_out["shift"] if logits_out is not None else None)
    if reference is not None: rep["relative_to_reference"] = relative_errors(rep, reference)
    return rep


def write_trust(run_dir, cfg, data_root: Optional[str] = None, log=print) -> dict:
    """The recipe's `eval:` trust evaluations of a finished run (`EvalCfg`): their logits to trust_logits.npz
    (`rundir.compact.save_trust_logits`: OOD sets and corrupted images, so other scores can be computed later without
    the model), then their metrics to trust.json, each atomically; trust.json last, as it marks the evaluations done."""
    import json
    from .rundir.compact import save_trust_logits
    from .rundir import TRUST_LOGITS
    from .safeio import save_atomic
    shift = ",".join(map(str, cfg.shift.severities)) if cfg.shift else None
    kept = {}
    res = evaluate_run(run_dir, data_root, ood=list(cfg.ood), ood_max=cfg.ood_max, shift=shift,
                       shift_max=cfg.shift.max_images if cfg.shift else None, logits_out=kept)
    save_trust_logits(Path(run_dir) / TRUST_LOGITS, kept.get("ood", {}), kept.get("shift", {}),
                      kept.get("shift_labels", torch.zeros(0, dtype=torch.long)))
    res = {k: res[k] for k in ("run", "n_test", "selective", "ood", "shift") if k in res}
    save_atomic(lambda t: Path(t).write_text(json.dumps(res, indent=1)), Path(run_dir) / TRUST)
    log(f"trust evaluations of {run_dir}: {TRUST} ({', '.join(k for k in ('ood', 'shift') if k in res) or 'selective'})")
    return res
