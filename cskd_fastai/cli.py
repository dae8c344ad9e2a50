"""`cskd-fastai`: train / eval / compare / archive / check / analyze / demo, with one-line errors for bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from .cli_errors import _guard, _one_line  # noqa: F401  (_one_line: tests read it here)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Class-wise self-knowledge distillation (CS-KD, Yun et al. CVPR 2020) for fastai.")


def _version(value: bool):
    if value:
        from . import __version__
        typer.echo(f"cskd-fastai {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    "Class-wise self-knowledge distillation (CS-KD) for fastai: paper recipes, honest reports, a demo app."
    # A callback keeps typer from collapsing the command name when only one command is registered.
    # Everything heavy (torch, fastai, gradio) is imported inside the commands: --help and --version stay instant.


@app.command()
def train(recipe: Path = typer.Argument(..., help="recipe YAML, e.g. recipes/quickstart.yaml"),
          set_: List[str] = typer.Option([], "--set", help="override a key: --set train.epochs=10 (repeatable)"),
          data_root: Optional[str] = typer.Option(None, "--data-root", help="dataset root (overrides dataset.root)"),
          out: Path = typer.Option(Path("runs"), "--out", help="where run directories go"),
          seed: Optional[List[int]] = typer.Option(None, "--seed", help="train these seeds instead of the recipe's"),
          only: Optional[List[str]] = typer.Option(None, "--only", help="train only these methods (name or label)"),
          resume: bool = typer.Option(False, "--resume", help="continue unfinished runs from their last epoch, skip finished ones"),
          progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="progress bars (default: on a terminal)"),
          distributed: bool = typer.Option(False, "--distributed", help="one process per GPU (or --nproc) through torchrun "
                                           "and fastai's distrib_ctx: each step sees processes x bs anchors; rank 0 writes"),
          nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="with --distributed: number of processes "
                                              "(default: visible GPUs; on CPU, gloo processes)")):
    "Train every method x seed of a recipe, then print the comparison table."
    def _do():
        from . import distributed as D
        from .compare import collect, summarize, to_markdown
        from .recipe import load_recipe
        from .train import plan_runs, train_recipe
        if out.exists() and not out.is_dir():   # before the data is loaded, not after
            raise ValueError(f"--out {out} is a file; pass a folder (it is created if missing)")
        bad = [s for s in seed or [] if not 0 <= s < 2 ** 32]
        if bad: raise ValueError(f"--seed {bad[0]}: seeds are whole numbers from 0 to 2^32 - 1")
        sets = list(set_) + ([f"seeds=[{','.join(map(str, seed))}]"] if seed else [])
        r = load_recipe(recipe, sets)
        if nproc is not None and not distributed: raise ValueError("--nproc needs --distributed")
        if distributed and not any(k in os.environ for k in D.LAUNCHER_ENV):  # not launched yet: relaunch under torchrun
            import subprocess
            import torch
            n = nproc or torch.cuda.device_count()
            if n < 1: raise ValueError("--distributed found no GPU; pass --nproc N to run N CPU (gloo) processes")
            if n > 1:
                plan_runs(r, out, resume=resume, only=only or None)   # bad input: one error line here, not N tracebacks
                args = ["train", str(recipe), *[a for s in set_ for a in ("--set", s)], "--out", str(out)]
                args += [a for s in seed or [] for a in ("--seed", str(s))] + [a for o in only or [] for a in ("--only", o)]
                if data_root is not None: args += ["--data-root", data_root]
                if resume: args.append("--resume")
                if progress is not None: args.append("--progress" if progress else "--no-progress")
                cmd = D.launch_command(args, n)
                typer.echo(f"launching {n} processes: {' '.join(cmd)}")
                rc = subprocess.run(cmd).returncode
                if rc: raise typer.Exit(rc)
                return
            typer.echo("--distributed with one process: training in this process")
        dirs = train_recipe(r, out, data_root=data_root, resume=resume, only=only or None, progress=progress)
        if D.is_main(): typer.echo("\n" + to_markdown(summarize(collect(dirs))))
    _guard(_do)


@app.command("eval")
def evaluate(run_dir: Path = typer.Argument(..., help="a finished run directory"),
             data_root: Optional[str] = typer.Option(None, "--data-root", "--data",
                                                     help="dataset root (default: the one the run was trained on)"),
             ood: Optional[str] = typer.Option(None, "--ood", help="also score unfamiliar images: a folder of images, "
                                               "a registered dataset (its test split) or holdout (the recipe's "
                                               "dataset.holdout_classes)"),
             shift: Optional[str] = typer.Option(None, "--shift", help="also evaluate under the 15 ImageNet-C "
                                                 "corruptions at these severities, e.g. 1-5 or 1,3,5"),
             shift_ref: Optional[Path] = typer.Option(None, "--shift-ref", help="a CE run's `eval --shift` JSON: add "
                                                      "errors relative to it (mCE)"),
             max_images: int = typer.Option(2000, "--max-images", "--ood-max", min=1,
                                            help="at most this many OOD / corrupted test images (seeded draws)"),
             progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="progress bar (default: on a terminal)")):
    "Re-evaluate a run on its recipe's test set (+ unfamiliar images, corruptions); prints metrics as JSON."
    def _do():
        import sys
        from .evaluate import evaluate_run
        res = evaluate_run(run_dir, data_root=data_root, ood=ood, ood_max=max_images, shift=shift, shift_ref=shift_ref,
                           progress=sys.stderr.isatty() if progress is None else progress)
        typer.echo(json.dumps(res, indent=2))
    _guard(_do)


@app.command()
def predict(run_dir: Path = typer.Argument(..., help="a finished run directory"),
            images: List[Path] = typer.Argument(..., help="image files and/or folders (searched recursively)"),
            csv: Optional[Path] = typer.Option(None, "--csv", help="also write one row per image to this CSV"),
            top_k: int = typer.Option(5, "--top-k", min=1, help="classes shown per image"),
            temperature: str = typer.Option("fitted", "--temperature", help="fitted (the run's calibrated T, as in "
                                            "the demo), none (T = 1) or a number"),
            progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="progress bar (default: on a terminal)"),
            coverage: Optional[float] = typer.Option(None, "--coverage", help="also give each image's conformal prediction "
                                                     "set at this coverage (e.g. 0.9), calibrated on the run's validation split"),
            score: str = typer.Option("lac", "--score", help="conformal score: lac, aps, aps_randomized, raps, raps_randomized"),
            classwise: bool = typer.Option(False, "--classwise", help="class-conditional sets (each class covered)")):
    "Predict classes of images with a run's exported learner, at its calibrated temperature; one row per image."
    def _do():
        from .predict import format_rows, predict_files, summary, write_csv
        if csv is not None and csv.is_dir(): raise ValueError(f"--csv {csv} is a folder; name a file such as {csv}/out.csv")
        if csv is not None and not csv.parent.is_dir():   # before any prediction, not after all of them
            raise ValueError(f"--csv {csv}: the folder {csv.parent} does not exist; create it or pick another path")
        rows = predict_files(run_dir, images, k=top_k, temperature=temperature, progress=progress,
                             coverage=coverage, score=score, classwise=classwise)
        typer.echo(format_rows(rows))
        typer.echo(summary(rows))
        if coverage is not None:
            from .sets import GUARANTEE
            typer.echo("prediction sets: " + GUARANTEE.format(pct=f"{100 * coverage:g}%"))
        if csv: write_csv(rows, csv); typer.echo(f"wrote {csv}")
    _guard(_do)


@app.command()
def compare(run_dirs: List[Path] = typer.Argument(..., help="run directories or folders that contain them"),
            csv: Optional[Path] = typer.Option(None, "--csv", help="also write the table as CSV here"),
            split: str = typer.Option("test", "--split", help="test, or valid (choose settings on valid, never on test)"),
            sets: bool = typer.Option(False, "--sets", help="also a table of conformal prediction sets: coverage, mean and "
                                      "median size at 90% and 95%, worst-class coverage of the class-conditional form")):
    "One table of test top-1/top-5 error, ECE and NLL (mean ± std over seeds) per dataset/model/method."
    def _do():
        from .compare import collect, summarize, to_csv, to_markdown
        if split not in ("test", "valid"): raise ValueError(f"--split must be test or valid, got {split!r}")
        if csv is not None and not csv.parent.is_dir():   # before reading every run, not after
            raise ValueError(f"--csv {csv}: the folder {csv.parent} does not exist; create it or pick another path")
        s = summarize(collect(run_dirs, split))
        typer.echo(to_markdown(s, split=split))
        if sets:
            from .compare import set_table
            typer.echo("\n" + set_table(run_dirs, split))
        if csv: to_csv(s, csv); typer.echo(f"wrote {csv}")
    _guard(_do)


@app.command()
def archive(run_dirs: List[Path] = typer.Argument(..., help="finished run directories or folders that contain them"),
            to: Path = typer.Option(Path("docs/evidence"), "--to", help="archive root: <recipe>/<label>/seed<k> below it")):
    "Copy finished runs' metrics, history, logits and recipe (no export, no checkpoint) into a folder to commit."
    def _do():
        from .rundir import archive_run, finished_runs
        for r in finished_runs(run_dirs): typer.echo(f"archived {r} -> {archive_run(r, to)}")
    _guard(_do)


@app.command()
def check(recipe: Path = typer.Argument(..., help="recipe YAML"),
          set_: List[str] = typer.Option([], "--set", help="override a key (repeatable)"),
          data_root: Optional[str] = typer.Option(None, "--data-root", help="dataset root (overrides dataset.root)"),
          no_data: bool = typer.Option(False, "--no-data", help="validate the recipe only, not the dataset layout"),
          verify_images: bool = typer.Option(False, "--verify-images", help="decode every image file (slow on big "
                                             "sets) and list the ones training would fail on"),
          progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="progress bar (default: on a terminal)")):
    "Validate a recipe (keys, model) and its dataset layout (classes, splits, optionally every image) without training."
    def _do():
        from .recipe import load_recipe
        r = load_recipe(recipe, list(set_))
        runs = [f"{m.run_label} x seeds {r.seeds}" for m in r.methods]
        typer.echo(f"recipe {recipe}: ok ({r.name}: {r.dataset.name}, {r.model.arch}, {r.train.epochs} epochs; runs: {'; '.join(runs)})")
        if no_data: return
        from .pipeline import load_data
        d = load_data(r.dataset, data_root)
        typer.echo(f"dataset {d.name}: ok ({len(d.classes)} classes, {len(d.train.items)} train, {len(d.test.items)} test)")
        if verify_images: _verify_images(d, progress)
    _guard(_do)


def _verify_images(data, progress: Optional[bool]) -> None:
    "Decode every image file of `data`; list the unreadable ones (at most 20) and fail with their count."
    import sys
    from .images import verify_image
    files = [p for split in (data.train, data.test) for p in split.items if isinstance(p, (str, Path))]
    if not files: typer.echo("images: stored as arrays, nothing to decode"); return
    bad = []
    show = sys.stdout.isatty() if progress is None else progress
    if show:
        from fastprogress.fastprogress import progress_bar
        files_iter = progress_bar(files, leave=False)
    else: files_iter = files
    for f in files_iter:
        try: verify_image(f)
        except (ValueError, OSError) as e: bad.append(str(e))
    if not bad: typer.echo(f"images: ok ({len(files)} files decoded)"); return
    for b in bad[:20]: typer.echo(f"bad image: {b}", err=True)
    more = " (first 20 listed)" if len(bad) > 20 else ""
    raise ValueError(f"{len(bad)} of {len(files)} image files cannot be decoded{more}; remove or replace them, "
                     f"then run check again")


@app.command()
def download(dataset: str = typer.Argument(..., help="cifar10, cifar100, cub, tinyimagenet, dogs or mit67"),
             to: Path = typer.Option(..., "--to", help="folder to put the dataset in (the --data-root of train/check)"),
             keep_archives: bool = typer.Option(False, "--keep-archives", help="keep the downloaded archives"),
             progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="progress (default: on a terminal)")):
    "Download a paper dataset from its official archive (resumable, checksum verified) into the loaders' layout."
    def _do():
        from .download import download_dataset
        d = download_dataset(dataset, to, progress=progress, keep_archives=keep_archives, log=typer.echo)
        typer.echo(f"dataset {d.name}: ok ({len(d.classes)} classes, {len(d.train.items)} train, {len(d.test.items)} "
                   f"test) in {to}; train with --data-root {to}")
    _guard(_do)


@app.command()
def trust(run_dirs: List[Path] = typer.Argument(..., help="run directories whose export/checkpoint you made yourself")):
    "Record the SHA-256 of runs' export.pkl and checkpoint.pth as they are now (for runs trained before hashes existed)."
    def _do():
        from .rundir import CHECKPOINT, EXPORT, WEIGHTS, record_hash
        for d in run_dirs:
            if not d.is_dir(): raise ValueError(f"{d} is not a run directory")
            names = [n for n in (EXPORT, CHECKPOINT, WEIGHTS) if (d / n).is_file()]
            if not names: raise ValueError(f"{d} has neither {EXPORT} nor {CHECKPOINT}")
            for n in names: typer.echo(f"{d / n}: sha256 {record_hash(d, n)}")
    _guard(_do)


@app.command()
def analyze(run_dirs: List[Path] = typer.Argument(..., help="finished run directories (e.g. a CE and a CS-KD run)"),
            out: Path = typer.Option(Path("analysis"), "--out", help="output folder"),
            data_root: Optional[str] = typer.Option(None, "--data-root", help="dataset root (default: each recipe's)"),
            max_items: Optional[int] = typer.Option(None, "--max-items", help="analyze at most this many test images")):
    "Recall@k of embeddings, intra-class variation, over-confidence and t-SNE plots, compared across runs."
    def _do():
        from .analysis import analyze_runs, summary_table
        report = analyze_runs(run_dirs, out, data_root=data_root, max_items=max_items)
        typer.echo(summary_table(report))
        typer.echo(f"wrote {report} (definitions and figures)")
    _guard(_do)


@app.command()
def demo(run_dirs: List[Path] = typer.Argument(..., help="finished run directories to compare side by side"),
         host: str = typer.Option("127.0.0.1", help="bind address (keep 127.0.0.1 unless you mean to expose it)"),
         port: Optional[int] = typer.Option(None, help="port (default: a free one)")):
    "Launch the Gradio app: calibrated predictions of trained learners, side by side."
    def _do():
        from .app import launch
        launch([str(p) for p in run_dirs], host=host, port=port)
    _guard(_do)


def main():
    import warnings
    # fastai calls torch.jit.script at import time and torch 2.14 warns about it on every import: noise in a
    # command's output, not about our code (the library itself installs no filter)
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    app()


if __name__ == "__main__":
    main()
