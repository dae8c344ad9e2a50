"`cskd-fastai` end to end: train -> eval -> compare, resume after a kill, and the bad-input catalogue."
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cskd_fastai.cli import app
from cskd_fastai.testing.replicas import make_cub, make_imagefolder

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_recipe(path: Path, root, epochs=2, methods=None, **train) -> Path:
    rec = dict(name="tiny", dataset=dict(name="imagefolder", root=str(root), image_size=16, valid_pct=0.25),
               model=dict(arch="small_cnn"),
               train=dict(epochs=epochs, bs=4, lr=0.05, schedule="one_cycle", augment="flip", **train),
               methods=methods or [dict(name="ce"), dict(name="cskd", lam=1.0, temp=4.0)], seeds=[0])
    path.write_text(yaml.safe_dump(rec, sort_keys=False))
    return path


def cli(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"), n_per_class=8, n_classes=3, n_test_per_class=3)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    recipe = write_recipe(d / "tiny.yaml", folder)
    code, out = cli("train", recipe, "--out", d / "runs", "--no-progress")
    assert code == 0, out
    return d / "runs", out


RUN_FILES = ("recipe.yaml", "env.json", "history.csv", "metrics.json", "logits.pt", "export.pkl",
             "reliability.png", "curves.png", "checkpoint.pth", "DONE")


def test_train_writes_complete_run_dirs(trained):
    runs, out = trained
    assert "epoch 1/2" in out and "| tiny | imagefolder | small_cnn | ce |" in out and "cskd-lam1-T4" in out
    for label in ("ce", "cskd-lam1-T4"):
        d = runs / "tiny" / label / "seed0"
        for f in RUN_FILES: assert (d / f).exists(), f"{d} lacks {f}"
        m = json.loads((d / "metrics.json").read_text())
        assert set(m["test"]) == {"top1_err", "top5_err", "ece", "ece_adaptive", "ece_classwise", "nll", "brier",
                                      "aurc", "e_aurc", "augrc"} and m["facts"]["n_test"] == 9
        assert m["facts"]["selected_epoch"] == 2
        hist = (d / "history.csv").read_text().splitlines()
        assert len(hist) == 3
        if label != "ce": assert "train_ce" in hist[0] and "train_kd" in hist[0] and "cskd_lam" in hist[0]
        rec = yaml.safe_load((d / "recipe.yaml").read_text())
        assert rec["methods"][0]["name"] == label.split("-")[0] and rec["seeds"] == [0]


def test_eval_reproduces_stored_test_metrics(trained):
    runs, _ = trained
    d = runs / "tiny" / "cskd-lam1-T4" / "seed0"
    code, out = cli("eval", d)
    assert code == 0, out
    got = json.loads(out[out.index("{"):])["test"]
    want = json.loads((d / "metrics.json").read_text())["test"]
    for k in want: assert got[k] == pytest.approx(want[k], abs=1e-5), k


def test_compare_groups_and_writes_csv(trained, tmp_path):
    runs, _ = trained
    code, out = cli("compare", runs, "--csv", tmp_path / "t.csv")
    assert code == 0, out
    rows = [l for l in out.splitlines() if l.startswith("| tiny | imagefolder")]
    assert len(rows) == 2
    assert (tmp_path / "t.csv").read_text().startswith("recipe,dataset,model,method,epochs,seeds,top1_err,top1_err_std")


def test_export_of_a_cli_run_loads_in_fresh_process(trained):
    runs, _ = trained
    d = runs / "tiny" / "ce" / "seed0"
    code = ("import sys; from cskd_fastai.rundir import load_run_learner; from cskd_fastai.transforms import load_image\n"
            "learn = load_run_learner(sys.argv[1]); img = sys.argv[2]\n"
            "assert not [c for c in learn.cbs if type(c).__name__ in ('CSKD','MixUp')]\n"
            "print('OK', learn.predict(load_image(img))[0])")
    img = next(p for p in (Path(yaml.safe_load((d / 'recipe.yaml').read_text())['dataset']['root']) / 'test').rglob('*')
               if p.suffix.lower() in ('.png', '.jpg', '.jpeg', '.bmp', '.webp'))
    r = subprocess.run([sys.executable, "-c", code, str(d), str(img)], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_subprocess_prints_plain_epoch_lines(folder, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", folder, epochs=1, methods=[dict(name="cskd", lam=3.0)])
    r = subprocess.run([sys.executable, "-m", "cskd_fastai", "train", str(recipe), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=ENV, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "epoch 1/1 train_loss=" in r.stdout and "\r" not in r.stdout      # no progress bars off a terminal


def _metrics(run_root):
    d = next(Path(run_root).rglob("metrics.json")).parent
    return json.loads((d / "metrics.json").read_text())["test"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(folder, tmp_path):
    "SIGKILL a real training process after its first checkpoint; --resume finishes with the uninterrupted result."
    recipe = write_recipe(tmp_path / "r.yaml", folder, epochs=6, methods=[dict(name="cskd", lam=1.0)])
    cmd = [sys.executable, "-m", "cskd_fastai", "train", str(recipe), "--no-progress"]
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], capture_output=True, text=True, env=ENV, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    p = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    ckpt = out / "tiny" / "cskd-lam1-T4" / "seed0" / "checkpoint.pth"
    t0 = time.time()
    while not ckpt.exists() and p.poll() is None and time.time() - t0 < 240: time.sleep(0.01)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (ckpt.parent / "DONE").exists(), "the run finished before it could be killed"
    code, msg = cli("train", recipe, "--out", out, "--no-progress")           # no --resume: refuses, touches nothing
    assert code == 2 and "already exists" in msg and "--resume" in msg
    res = subprocess.run(cmd + ["--out", str(out), "--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stdout
    hist = (ckpt.parent / "history.csv").read_text().splitlines()
    assert len(hist) == 7 and [int(l.split(",")[0]) for l in hist[1:]] == list(range(6))
    a, b = _metrics(tmp_path / "ref"), _metrics(out)
    for k in a: assert b[k] == pytest.approx(a[k], abs=1e-4), k


# ---- the bad-input catalogue: each is one clear `error:` line, exit code 2 ---------------------------------
def _one_error_line(code, out, *needles):
    assert code == 2, out
    errs = [l for l in out.splitlines() if l.startswith("error:")]
    assert len(errs) == 1, out
    for n in needles: assert n in errs[0], errs[0]
    assert "Traceback" not in out


@pytest.mark.parametrize("text,needles", [
    ("name: x\n  dataset: [", ("malformed YAML", "line")),
    ("name: x\ndataset: {name: digits}\nmodel: {arch: small_cnn}\ntrain: {epochs: 1, bs: 4, lr: 0.1, epochz: 3}\n"
     "methods: [{name: ce}]\n", ("train.epochz", "unknown key")),
    ("name: x\ndataset: {name: digits}\nmodel: {arch: small_cnn}\ntrain: {epochs: many, bs: 4, lr: 0.1}\n"
     "methods: [{name: ce}]\n", ("train.epochs", "integer", "'many'")),
    ("name: x\ndataset: {name: digits}\nmodel: {arch: small_cnn}\ntrain: {epochs: 1, bs: 4, lr: -0.1}\n"
     "methods: [{name: ce}]\n", ("train.lr", "greater than 0")),
    ("name: x\ndataset: {name: digits}\nmodel: {arch: small_cnn}\ntrain: {epochs: 1, bs: 4, lr: 0.1}\n"
     "methods: [{name: cskd, temp: 0}]\n", ("methods.0.temp", "> 0")),
    ("name: x\ndataset: {name: mnist9}\nmodel: {arch: small_cnn}\ntrain: {epochs: 1, bs: 4, lr: 0.1}\n"
     "methods: [{name: ce}]\n", ("dataset.name", "unknown dataset")),
    ("name: x\ndataset: {name: digits}\ntrain: {epochs: 1, bs: 4, lr: 0.1}\nmethods: [{name: ce}]\n",
     ("model", "required key is missing")),
])
def test_bad_recipes_fail_with_one_line(tmp_path, text, needles):
    f = tmp_path / "bad.yaml"; f.write_text(text)
    _one_error_line(*cli("check", f, "--no-data"), str(f), *needles)


def test_missing_root_and_wrong_layout(tmp_path):
    cub = tmp_path / "cub.yaml"
    cub.write_text((ROOT / "recipes" / "cub.yaml").read_text())
    _one_error_line(*cli("check", cub, "--data-root", tmp_path / "nowhere"), "does not exist", "--data-root")
    root = make_cub(tmp_path / "c", n_per_class=2, n_classes=3)
    next(Path(root).rglob("images.txt")).unlink()
    _one_error_line(*cli("check", cub, "--data-root", root), "images.txt", "expected")


def test_corrupt_image_names_the_file(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_per_class=4, n_classes=2, n_test_per_class=1)
    bad = sorted((root / "train" / "class_00").glob("img_*"))[0]
    bad.write_bytes(b"this is not an image")
    recipe = write_recipe(tmp_path / "r.yaml", root, epochs=1, methods=[dict(name="ce")], drop_last=False)
    _one_error_line(*cli("train", recipe, "--out", tmp_path / "o", "--no-progress"), "cannot read image", bad.name)


def test_class_with_one_image_warns_and_trains(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_per_class=5, n_classes=3, n_test_per_class=1)
    for f in sorted((root / "train" / "class_02").glob("img_*"))[1:]: f.unlink()
    recipe = write_recipe(tmp_path / "r.yaml", root, epochs=1, methods=[dict(name="cskd")])
    code, out = cli("train", recipe, "--out", tmp_path / "o", "--no-progress")
    assert code == 0, out
    assert "warning: 1 class(es) have a single training image" in out and "class_02" in out


def test_existing_run_dir_is_never_overwritten(trained, folder, tmp_path):
    runs, _ = trained
    d = runs / "tiny" / "ce" / "seed0"
    before = {f.name: f.stat().st_mtime_ns for f in d.iterdir()}
    recipe = write_recipe(tmp_path / "tiny.yaml", folder)
    _one_error_line(*cli("train", recipe, "--out", runs, "--no-progress"), "already exists", "--resume")
    assert {f.name: f.stat().st_mtime_ns for f in d.iterdir()} == before


def test_archive_keeps_what_reports_read_and_never_overwrites(trained, tmp_path):
    from cskd_fastai.compare import collect
    from cskd_fastai.rundir import ARCHIVED, load_logits
    runs, _ = trained
    code, out = cli("archive", runs, "--to", tmp_path / "ev")
    assert code == 0 and out.count("archived ") == 2, out
    for label in ("ce", "cskd-lam1-T4"):
        a, src = tmp_path / "ev" / "tiny" / label / "seed0", runs / "tiny" / label / "seed0"
        # no export, no checkpoint, no plots; the logits in their compact float16 form
        assert sorted(f.name for f in a.iterdir()) == sorted([*ARCHIVED, "logits.npz", "DONE"])
        (za, ya, ca), (zs, ys, cs) = load_logits(a), load_logits(src)
        assert torch.equal(ya, ys) and ca == cs and torch.equal(za.argmax(1), zs.argmax(1))
        assert torch.allclose(za, zs, atol=2e-3 * float(zs.abs().max()))
    key = lambda r: r["method"]
    got, want = sorted(collect([tmp_path / "ev"]), key=key), sorted(collect([runs]), key=key)
    for g, w in zip(got, want):   # metrics.json's numbers exactly; those refitted from the float16 logits closely
        refit = ("path", "T", "ece_ts", "nll_ts", "cov90", "size90")
        assert {k: v for k, v in g.items() if k not in refit} == {k: v for k, v in w.items() if k not in refit}
        assert g["T"] == pytest.approx(w["T"], abs=1e-3) and g["nll_ts"] == pytest.approx(w["nll_ts"], abs=1e-4)
        assert g["ece_ts"] == pytest.approx(w["ece_ts"], abs=2e-3)
    r = subprocess.run([sys.executable, str(ROOT / "docs/scripts/paired_test.py"), *(tmp_path / "ev" / "tiny" / l / "seed0"
                        for l in ("ce", "cskd-lam1-T4"))], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and "McNemar p =" in r.stdout, r.stderr
    before = (tmp_path / "ev" / "tiny" / "ce" / "seed0" / "metrics.json").stat().st_mtime_ns
    _one_error_line(*cli("archive", runs / "tiny" / "ce" / "seed0", "--to", tmp_path / "ev"), "already exists")
    assert (tmp_path / "ev" / "tiny" / "ce" / "seed0" / "metrics.json").stat().st_mtime_ns == before
    _one_error_line(*cli("archive", tmp_path / "nothing", "--to", tmp_path / "ev"), "does not exist")


def test_resume_skips_finished_runs(trained, folder, tmp_path):
    runs, _ = trained
    recipe = write_recipe(tmp_path / "tiny.yaml", folder)
    code, out = cli("train", recipe, "--out", runs, "--resume", "--no-progress")
    assert code == 0 and out.count("skipping finished run") == 2, out


def test_every_shipped_recipe_passes_check():
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 8
    for r in recipes:
        code, out = cli("check", r, "--no-data")
        assert code == 0 and "ok" in out, f"{r}: {out}"


def test_set_overrides_and_help():
    from cskd_fastai.recipe import load_recipe
    r = load_recipe(ROOT / "recipes" / "cub.yaml", ["train.epochs=3", "methods.1.lam=1.5", "dataset.root=/x"])
    assert r.train.epochs == 3 and r.methods[1].lam == 1.5 and r.dataset.root == "/x"
    for cmd in ("train", "eval", "compare", "check", "analyze", "demo"):
        code, out = cli(cmd, "--help")
        assert code == 0 and "Usage" in out, cmd


def test_analyze_compares_runs(trained, tmp_path):
    runs, _ = trained
    dirs = [runs / "tiny" / m / "seed0" for m in ("ce", "cskd-lam1-T4")]
    code, out = cli("analyze", *dirs, "--out", tmp_path / "an")
    assert code == 0, out
    report = (tmp_path / "an" / "report.md").read_text()
    assert "ce" in report and "cskd-lam1-T4" in report and (tmp_path / "an" / "embeddings.png").exists()
    # the summary table is printed, not only the report's path
    table = [l for l in out.splitlines() if l.startswith("| ")]
    assert table[0].startswith("| run |") and len(table) == 3 and any(l.startswith("| ce |") for l in table)
    _one_error_line(*cli("analyze", runs / "nope"), "nope")


def test_compare_on_the_validation_split(trained):
    runs, _ = trained
    code, out = cli("compare", runs, "--split", "valid")
    assert code == 0 and out.count("| imagefolder") == 2, out
    _one_error_line(*cli("compare", runs, "--split", "train"), "--split must be test or valid")


# ---- a fast command line, --version, predict --------------------------------------------------------------
def test_cli_imports_neither_torch_nor_fastai_for_help_and_version():
    code = ("import sys; import cskd_fastai.cli as c\n"
            "heavy = [m for m in ('torch', 'fastai', 'gradio', 'torchvision') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from typer.testing import CliRunner\n"
            "r = CliRunner().invoke(c.app, ['--version']); assert r.exit_code == 0 and r.output.startswith('cskd-fastai '), r.output\n"
            "r = CliRunner().invoke(c.app, ['--help']); assert r.exit_code == 0 and 'predict' in r.output and 'download' in r.output\n"
            "r = CliRunner().invoke(c.app, ['train']); assert r.exit_code == 2\n"
            "heavy = [m for m in ('torch', 'fastai', 'gradio') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint('OK')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
    from cskd_fastai import __version__
    code, out = cli("--version")
    assert code == 0 and out.strip() == f"cskd-fastai {__version__}"


def test_predict_rows_csv_and_unreadable_files(trained, folder, tmp_path):
    import csv
    runs, _ = trained
    run = runs / "tiny" / "cskd-lam1-T4" / "seed0"
    good = sorted((folder / "test").rglob("img_000*"))[:2]
    bad = tmp_path / "broken.png"; bad.write_bytes(b"not an image")
    code, out = cli("predict", run, *good, bad, folder / "test" / "class_01", "--csv", tmp_path / "p.csv",
                    "--top-k", "2", "--temperature", "none", "--no-progress")
    assert code == 0, out
    assert "unreadable" in out and str(bad) in out and "T = 1" in out
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    n_folder = len([f for f in (folder / "test" / "class_01").iterdir() if f.suffix.lower() != ".txt"])
    assert len(rows) == 2 + 1 + n_folder
    broken = next(r for r in rows if r["path"] == str(bad))
    assert broken["error"] and not broken["class_1"]
    ok = [r for r in rows if not r["error"]]
    assert all(r["class_1"] in ("class_00", "class_01", "class_02") and float(r["temperature"]) == 1.0 for r in ok)
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in ok)
    # the probabilities are the model's at T = 1: softmax of the logits `eval` uses
    from cskd_fastai.app import load_model, predict_logits
    e = load_model(run)
    z = predict_logits(e, ok[0]["path"])
    assert float(ok[0]["prob_1"]) == pytest.approx(float(torch.softmax(z, 0).max()), abs=1e-5)
    _one_error_line(*cli("predict", run, tmp_path / "nothing-here"), "does not exist")
    _one_error_line(*cli("predict", run, good[0], "--temperature", "hot"), "--temperature")


def test_compare_one_seed_prints_no_std_and_temperature_columns(trained):
    runs, _ = trained
    code, out = cli("compare", runs)
    assert code == 0, out
    head = next(l for l in out.splitlines() if l.startswith("| recipe"))
    for col in ("ECE eq-mass", "ECE class-wise", "ECE @T", "NLL @T"): assert col in head
    row = next(l for l in out.splitlines() if "| ce |" in l)
    assert "±" not in row and "| 1 |" in row
    assert "fitted by NLL on the validation split" in out


def _logits_run(d: Path, logits: torch.Tensor, labels: torch.Tensor) -> Path:
    from cskd_fastai.rundir import save_logits
    d.mkdir(parents=True)
    save_logits(d, {"test": (logits, labels)}, ["a", "b", "c"])
    return d


def test_save_logits_round_trips_through_load_logits(tmp_path):
    "The one writer of logits.pt and its reader agree: per split, columns named by `classes`, labels as long."
    from cskd_fastai.rundir import load_logits, save_logits
    z, y = torch.randn(4, 3, dtype=torch.float16), torch.tensor([2, 0, 1, 2], dtype=torch.int32)
    save_logits(tmp_path, {"valid": (z[:2], y[:2]), "test": (z, y)}, [10, "b", "c"])
    lz, ly, classes = load_logits(tmp_path, "test")
    assert lz.dtype == torch.float32 and torch.equal(lz, z.float()) and ly.dtype == torch.long and ly.tolist() == [2, 0, 1, 2]
    assert classes == ["10", "b", "c"] and load_logits(tmp_path, "valid")[0].shape == (2, 3)
    assert not list(tmp_path.glob("*.tmp*"))      # written atomically: no temporary left behind


def test_paired_test_pairs_runs_with_renamed_class_indices(tmp_path):
    "Runs archived before #18 stored labels in loader order: same images, class indices renamed; still pairable."
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    hit = lambda y, right: torch.nn.functional.one_hot(torch.where(torch.tensor(right).bool(), y, (y + 1) % 3), 3).float()
    perm = torch.tensor([2, 0, 1])     # old index of each new class: b is 0, c is 1, a is 2 in the old run
    a = _logits_run(tmp_path / "new", hit(y, [1, 1, 1, 0, 0, 0]), y)
    b = _logits_run(tmp_path / "old", hit(perm[y], [1, 0, 0, 0, 0, 0]), perm[y])
    script = [sys.executable, str(ROOT / "docs/scripts/paired_test.py")]
    r = subprocess.run(script + [str(a), str(b)], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and "A right, B wrong: 2  B right, A wrong: 0" in r.stdout, r.stdout + r.stderr
    c = _logits_run(tmp_path / "other", hit(y, [1] * 6), torch.tensor([0, 1, 1, 1, 2, 2]))   # not a renaming
    r = subprocess.run(script + [str(a), str(c)], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode != 0 and "not evaluated on the same test labels" in r.stderr


@pytest.mark.parametrize("msg,want", [
    ("Exception occured in `PSKD` when calling event `before_batch`:\n\tMultiple dispatch failed for 'torch.where'; "
     "all __torch_function__ handlers returned NotImplemented:\n\n  - tensor subclass TensorImage\n\n"
     "For more information, try re-running with TORCH_LOGS=not_implemented",
     "Multiple dispatch failed for 'torch.where'; all __torch_function__ handlers returned NotImplemented:"),
    ("Exception occured in `CSKD` when calling event `after_loss`:\n\tValueError: lam must be >= 0", "lam must be >= 0"),
    ("one line", "one line"), ("", "RuntimeError")])
def test_one_line_keeps_the_informative_line(msg, want):
    "fastai's callback header and torch's closing hint are not the error: the CLI prints the line that says what failed."
    from cskd_fastai.cli import _one_line
    assert _one_line(RuntimeError(msg)) == want


def test_eval_ood_predict_flag_and_the_stored_rule(trained, folder, tmp_path):
    """`eval --ood FOLDER` scores the run's test images against the folder's with every score, at T = 1 (and the
    fitted T where one is applied); metrics.json stores the flag rule that `predict` applies, and it is the rule the
    stored validation logits give; a bad --ood source is one line."""
    import csv
    import numpy as np
    from PIL import Image
    from cskd_fastai.metrics.calibration import fit_temperature_checked
    from cskd_fastai.metrics.ood import SCORES, familiarity_flag
    from cskd_fastai.rundir import load_logits
    runs, _ = trained
    run = runs / "tiny" / "ce" / "seed0"
    odd = tmp_path / "odd"; odd.mkdir()
    g = np.random.default_rng(0)
    for i in range(6): Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(odd / f"noise_{i}.png")
    code, out = cli("eval", run, "--ood", odd)
    assert code == 0, out
    rep = json.loads(out)["ood"][str(odd)]
    assert rep["n_ood"] == 6 and rep["unreadable"] == 0 and rep["source"].startswith("folder")
    for score in SCORES:
        m = rep["T=1"][score]
        assert 0 <= m["auroc"] <= 1 and 0 <= m["fpr95"] <= 1 and m["n_out"] == 6
    stored = json.loads((run / "metrics.json").read_text())["ood_flag"]
    vz, vy, _ = load_logits(run, "valid")
    assert stored == familiarity_flag(vz.numpy(), fit_temperature_checked(vz, vy).T) == \
        {k: rep["flag"][k] for k in stored}
    assert 0 <= rep["flag"]["test_flagged"] <= 1 and 0 <= rep["flag"]["ood_flagged"] <= 1
    code, out = cli("predict", run, odd, "--csv", tmp_path / "p.csv", "--no-progress")
    assert code == 0, out
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 6 and {r["unfamiliar"] for r in rows} <= {"0", "1"}
    n_flagged = sum(r["unfamiliar"] == "1" for r in rows)
    assert (f"{n_flagged} flagged" in out) == (n_flagged > 0)
    _one_error_line(*cli("eval", run, "--ood", "no_such_dataset"), "--ood no_such_dataset", "a folder of images")


def test_holdout_classes_train_without_them_and_eval_ood_holdout_scores_them(trained, folder, tmp_path):
    """A recipe that holds one class out trains on the other two (its vocabulary says so) and `eval --ood holdout`
    scores exactly the held-out class's test images against the run's test split."""
    recipe = write_recipe(tmp_path / "tiny.yaml", folder, epochs=1, methods=[dict(name="ce")])
    rec = yaml.safe_load(recipe.read_text()); rec["dataset"]["holdout_classes"] = ["class_01"]
    recipe.write_text(yaml.safe_dump(rec))
    code, out = cli("train", recipe, "--out", tmp_path / "runs", "--no-progress")
    assert code == 0, out
    run = tmp_path / "runs" / "tiny" / "ce" / "seed0"
    from cskd_fastai.rundir import load_logits
    assert load_logits(run, "test")[2] == ["class_00", "class_02"]
    code, out = cli("eval", run, "--ood", "holdout")
    assert code == 0, out
    rep = json.loads(out)
    n_held = len([f for f in (folder / "test" / "class_01").iterdir() if f.suffix.lower() != ".txt"])
    assert rep["ood"]["holdout"]["n_ood"] == n_held and "held-out" in rep["ood"]["holdout"]["source"]
    assert rep["n_test"] == 2 * n_held
    _one_error_line(*cli("eval", trained[0] / "tiny" / "ce" / "seed0", "--ood", "holdout"), "holds no classes out")


def test_eval_shift_reports_every_corruption_and_mce_against_a_reference(trained, tmp_path, monkeypatch):
    pytest.importorskip("imagecorruptions", reason="needs the [shift] extra (imagecorruptions-imaug)")
    from cskd_fastai.shift import CORRUPTIONS
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    runs, _ = trained
    code, out = cli("eval", runs / "tiny" / "ce" / "seed0", "--shift", "2", "--max-images", "2", "--no-progress")
    assert code == 0, out
    ce = json.loads(out)
    rep = ce["shift"]
    assert set(rep["corruptions"]) == set(CORRUPTIONS) and rep["n_images"] == 2
    assert all(set(v) == {"2"} for v in rep["corruptions"].values())
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(CORRUPTIONS) + 1          # cached: clean + 15
    (tmp_path / "ce.json").write_text(out)
    code, out = cli("eval", runs / "tiny" / "cskd-lam1-T4" / "seed0", "--shift", "2", "--max-images", "2",
                    "--shift-ref", tmp_path / "ce.json", "--no-progress")
    assert code == 0, out
    rel = json.loads(out)["shift"]["relative_to_reference"]
    assert set(rel["per_corruption"]) == set(CORRUPTIONS) and rel["mCE"] >= 0
    _one_error_line(*cli("eval", runs / "tiny" / "ce" / "seed0", "--shift", "7"), "severities between 1 and 5")


def test_recipe_eval_writes_trust_json_after_each_seed_archive_keeps_it_and_resume_fills_it_in(trained, folder, tmp_path,
                                                                                                monkeypatch):
    """`eval:` in a recipe runs the trust evaluations right after a seed finishes (trust.json, their logits in
    trust_logits.npz); `archive` keeps both files; adding `eval:` to a finished recipe and resuming writes it without retraining."""
    pytest.importorskip("imagecorruptions", reason="needs the [shift] extra (imagecorruptions-imaug)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    odd = tmp_path / "odd"; odd.mkdir()
    from PIL import Image
    for i in range(3): Image.new("RGB", (16, 16), (40 * i, 200, 10)).save(odd / f"o{i}.png")
    import shutil
    shutil.copytree(trained[0], tmp_path / "runs")          # the module's finished runs, copied: no training here
    recipe = write_recipe(tmp_path / "tiny.yaml", folder)
    run = tmp_path / "runs" / "tiny" / "ce" / "seed0"
    assert not (run / "trust.json").exists()
    rec = yaml.safe_load(recipe.read_text())
    rec["eval"] = dict(ood=[str(odd)], shift=dict(severities=[1], max_images=2))
    rec["methods"] = [dict(name="ce")]
    recipe.write_text(yaml.safe_dump(rec))
    before = (run / "metrics.json").stat().st_mtime_ns
    code, out = cli("train", recipe, "--out", tmp_path / "runs", "--resume", "--no-progress")
    assert code == 0 and "skipping finished run" in out and "trust evaluations" in out, out
    assert (run / "metrics.json").stat().st_mtime_ns == before                      # not retrained
    trust = json.loads((run / "trust.json").read_text())
    assert trust["ood"][str(odd)]["n_ood"] == 3 and trust["shift"]["n_images"] == 2 and "selective" in trust
    # the evaluations' logits are kept beside them, and give back trust.json's numbers without the model
    from cskd_fastai.metrics.functional import classification_metrics
    from cskd_fastai.rundir.compact import COMPACT_TOL, load_trust_logits
    from cskd_fastai.metrics.ood import ood_metrics, ood_score
    kept = load_trust_logits(run / "trust_logits.npz")
    assert set(kept["ood"]) == {str(odd)} and kept["ood"][str(odd)].shape[0] == 3
    assert set(kept["shift"]) == {"clean"} | {f"{c}/1" for c in trust["shift"]["corruptions"]}
    for cond, (z, y) in kept["shift"].items():
        want = trust["shift"]["clean"] if cond == "clean" else trust["shift"]["corruptions"][cond.split("/")[0]]["1"]
        got = classification_metrics(torch.from_numpy(z), torch.from_numpy(y))
        assert len(y) == 2 and got["top1_err"] == want["top1_err"], cond
        assert abs(got["ece"] - want["ece"]) <= COMPACT_TOL["ece"] and abs(got["nll"] - want["nll"]) < 1e-3, cond
    test_z = torch.load(run / "logits.pt", weights_only=True)["test"]["logits"].numpy().astype("float64")
    auroc = ood_metrics(ood_score(test_z, "msp", 1.0), ood_score(kept["ood"][str(odd)].astype("float64"), "msp", 1.0))["auroc"]
    assert abs(auroc - trust["ood"][str(odd)]["T=1"]["msp"]["auroc"]) < 1e-3
    code, out = cli("archive", run, "--to", tmp_path / "ev")
    assert code == 0, out
    assert json.loads((tmp_path / "ev" / "tiny" / "ce" / "seed0" / "trust.json").read_text()) == trust
    assert (tmp_path / "ev" / "tiny" / "ce" / "seed0" / "trust_logits.npz").read_bytes() == (run / "trust_logits.npz").read_bytes()
