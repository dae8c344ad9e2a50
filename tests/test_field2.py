"""Field-hardening 2 (issue #38): a resume that cannot mix recipes, and every file that decides a reported number
verified before it is used. Each test reproduces a case that gave a silently wrong result or a raw traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cskd_fastai.testing.replicas import make_imagefolder

from test_cli import _one_error_line, cli
from test_field import _recipe


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("d2") / "data", n_per_class=6, n_classes=3, n_test_per_class=2)


@pytest.fixture(scope="module")
def best_run(data_dir, tmp_path_factory):
    "A finished 2-epoch run that selects its epoch on validation (so it has a best.pth)."
    d = tmp_path_factory.mktemp("best")
    code, out = cli("train", _recipe(d / "r.yaml", "tiny", "imagefolder", data_dir, epochs=2, select="best_valid"),
                    "--out", d / "runs", "--no-progress")
    assert code == 0, out
    return d / "runs" / "tiny" / "ce" / "seed0"


def _unfinished_copy(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    "A copy of `run` at <tmp>/o/tiny/ce/seed0 without DONE (as a killed run leaves it), and its recipe as a file."
    dest = tmp_path / "o" / "tiny" / "ce" / "seed0"
    shutil.copytree(run, dest)
    (dest / "DONE").unlink()
    (tmp_path / "r.yaml").write_text((dest / "recipe.yaml").read_text())
    return dest, tmp_path / "r.yaml"


def _resume(recipe: Path, tmp_path: Path, *args):
    return cli("train", recipe, "--out", tmp_path / "o", "--resume", "--no-progress", *args)


# ---- 1: resume compares before it trains --------------------------------------------------------------------
def test_resume_refuses_a_changed_recipe_naming_keys_and_values(best_run, tmp_path):
    run, recipe = _unfinished_copy(best_run, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    code, out = _resume(recipe, tmp_path, "--set", "train.epochs=5", "--set", "train.lr=0.2",
                        "--set", "train.schedule=constant")
    _one_error_line(code, out, "cannot resume", "train.epochs: 2 -> 5", "train.lr: 0.05 -> 0.2",
                    "train.schedule: 'one_cycle' -> 'constant'", "fresh --out")
    assert "malloc" not in out and "workers" not in out                 # only what changes the result is named
    assert sorted(p.name for p in run.iterdir()) == before and not (run / "DONE").exists()   # nothing touched


@pytest.mark.parametrize("override, words", [("dataset.valid_pct=0.5", ("dataset.valid_pct: 0.25 -> 0.5", "train/valid split")),
                                             ("model.arch=resnet18", ("model.arch: 'small_cnn' -> 'resnet18'",))])
def test_resume_refuses_another_split_or_model(best_run, tmp_path, override, words):
    run, recipe = _unfinished_copy(best_run, tmp_path)
    _one_error_line(*_resume(recipe, tmp_path, "--set", override), "cannot resume", *words)


def test_resume_refuses_other_images_under_the_same_recipe(best_run, data_dir, tmp_path):
    "--data-root at a folder with one image fewer: the recipe is the same, the split is not."
    run, recipe = _unfinished_copy(best_run, tmp_path)
    other = shutil.copytree(data_dir, tmp_path / "other")
    next(p for p in sorted((other / "train").rglob("*.png"))).unlink()
    _one_error_line(*_resume(recipe, tmp_path, "--data-root", other), "cannot resume", "train/valid split")


def test_resume_accepts_moved_data_and_result_neutral_keys(best_run, data_dir, tmp_path):
    "The same images in another place, other loader workers or memory trimming: the run finishes as it would have."
    run, recipe = _unfinished_copy(best_run, tmp_path)
    moved = shutil.copytree(data_dir, tmp_path / "moved")
    code, out = _resume(recipe, tmp_path, "--data-root", moved, "--set", "train.malloc_trim_every=7")
    assert code == 0, out
    assert (run / "DONE").exists()
    got, want = (json.loads((p / "metrics.json").read_text())["test"] for p in (run, best_run))
    for k, v in want.items(): assert got[k] == pytest.approx(v, abs=1e-6), k


def test_a_checkpoint_without_fingerprint_is_compared_with_the_runs_recipe(best_run, tmp_path):
    "Runs checkpointed before fingerprints existed: their recipe.yaml is the reference."
    from cskd_fastai.rundir import CHECKPOINT, load_checkpoint, save_hashed
    run, recipe = _unfinished_copy(best_run, tmp_path)
    state = load_checkpoint(run); state.pop("fingerprint")
    save_hashed(lambda t: torch.save(state, t), run, CHECKPOINT)
    _one_error_line(*_resume(recipe, tmp_path, "--set", "train.wd=0.01"), "cannot resume", "train.wd: 0.0001 -> 0.01")


# ---- 2: every file that decides a reported number is verified --------------------------------------------------
def test_best_pth_is_hashed_and_a_tampered_one_is_refused(best_run, tmp_path):
    from cskd_fastai.rundir import BEST, read_verified
    assert read_verified(best_run, BEST)                             # written through save_hashed: it verifies
    run, recipe = _unfinished_copy(best_run, tmp_path)
    sd = torch.load(run / BEST, weights_only=True)
    torch.save({k: torch.zeros_like(v) for k, v in sd.items()}, run / BEST)   # zeroed weights: a "finished" 0.9 error
    _one_error_line(*_resume(recipe, tmp_path), str(run / BEST), "does not match")
    assert not (run / "DONE").exists()


@pytest.mark.parametrize("table, words", [([1, 2], "not a table"), ({"model.safetensors": 5}, "not a list of SHA-256"),
                                          ({"model.safetensors": [None]}, "not a list of SHA-256")])
def test_malformed_hashes_are_one_line(best_run, tmp_path, table, words):
    run = shutil.copytree(best_run, tmp_path / "h")
    (run / "hashes.json").write_text(json.dumps(table))
    _one_error_line(*cli("eval", run), "hashes.json", words)


def test_the_hash_is_checked_on_the_bytes_that_are_loaded(best_run, tmp_path, monkeypatch):
    "A file swapped after its check is never loaded: what is deserialized is what was hashed (no second open)."
    from cskd_fastai.rundir import files as F
    run = shutil.copytree(best_run, tmp_path / "t")
    opened = []
    stock = Path.read_bytes
    def read_bytes(self):
        opened.append(self.name)
        return stock(self)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    state = F.load_checkpoint(run)
    assert opened.count("checkpoint.pth") == 1 and state["epoch"] == 1


def test_compare_refuses_a_metrics_json_that_disagrees_with_the_logits(best_run, tmp_path):
    "An edited metrics.json (top1_err 0, nll 0.001) is refused, naming the run; never shown beside logit numbers."
    run = shutil.copytree(best_run, tmp_path / "e")
    m = json.loads((run / "metrics.json").read_text())
    m["test"].update(top1_err=0.0, nll=0.001)
    (run / "metrics.json").write_text(json.dumps(m))
    _one_error_line(*cli("compare", run), str(run), "metrics.json says test", "logits.pt gives")
    code, out = cli("compare", best_run)                               # the untouched run compares as before
    assert code == 0 and "| tiny |" in out, out


# ---- 3: opening a run dir never runs its code ------------------------------------------------------------------
PAYLOAD = "import os; open(os.environ['PWNED'], 'w').write('ran')"


class _Evil:
    def __reduce__(self): return (exec, (PAYLOAD,))


def test_a_malicious_export_with_a_matching_hash_never_runs(best_run, tmp_path, monkeypatch):
    """export.pkl replaced by a pickle that runs code, hashes.json rewritten to match: eval, predict, the demo's
    loader, analyze's learner and a teacher all rebuild the model from recipe.yaml + model.safetensors instead."""
    import pickle
    from cskd_fastai.rundir import EXPORT, record_hash
    from cskd_fastai.serving import load_model
    from cskd_fastai.rebuild import rebuild_learner, teacher_from_run
    run = shutil.copytree(best_run, tmp_path / "evil")
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED", str(marker))
    (run / EXPORT).write_bytes(pickle.dumps(_Evil()))
    record_hash(run, EXPORT)                                           # the attacker rewrote the hash to match
    code, out = cli("eval", run)
    assert code == 0 and '"top1_err"' in out, out
    images = sorted((run / "examples").glob("*.png"))[:2]
    code, out = cli("predict", run, *images)
    assert code == 0 and "2 images predicted" in out, out
    entry = load_model(run)
    teacher = teacher_from_run(run)
    assert entry.classes and teacher.teacher_classes == entry.classes and rebuild_learner(run).model is not None
    assert not marker.exists()                                         # the payload never ran
    pickle.loads((run / EXPORT).read_bytes())                          # what unpickling it does: the check can fail
    assert marker.exists()


def test_the_rebuilt_model_predicts_what_the_export_predicts(best_run):
    "Same logits from recipe + safetensors as from fastai's load_learner of the (trusted, own) export."
    from cskd_fastai.rebuild import rebuild_learner
    from cskd_fastai.rundir import load_run_learner
    from cskd_fastai.serving import predict_logits
    images = sorted((best_run / "examples").glob("*.png"))
    a = predict_logits(rebuild_learner(best_run), images)
    b = predict_logits(load_run_learner(best_run), images)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_tampered_weights_are_refused(best_run, tmp_path):
    from cskd_fastai.rundir import WEIGHTS
    run = shutil.copytree(best_run, tmp_path / "w")
    data = bytearray((run / WEIGHTS).read_bytes()); data[-1] ^= 1; (run / WEIGHTS).write_bytes(bytes(data))
    _one_error_line(*cli("eval", run), WEIGHTS, "does not match")


# ---- 4: data checks name the file ------------------------------------------------------------------------------
def test_check_lists_every_bad_image_bombs_included_and_training_refuses_them_by_name(tmp_path):
    "A decompression bomb (PNG header of 50000 x 50000) and an oversized PNG are listed with the rest; none stops it."
    import struct, zlib
    from PIL import Image
    from cskd_fastai.testing.replicas import make_imagefolder
    from cskd_fastai.transforms import ImageReadError, load_image
    root = make_imagefolder(tmp_path / "d", n_per_class=6, n_classes=3, n_test_per_class=2)
    cls = sorted(p for p in (root / "train").iterdir())[0]
    def png_header(path, w, h):   # a valid PNG signature and IHDR claiming w x h, no pixel data worth decoding
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    png_header(cls / "bomb.png", 50000, 50000)          # 2500 MP: Pillow's DecompressionBombError at open
    png_header(cls / "big.png", 8000, 6000)              # 48 MP: over our 40 MP budget
    (cls / "empty.png").write_bytes(b"")
    recipe = _recipe(tmp_path / "r.yaml", "tiny", "imagefolder", root)
    code, out = cli("check", recipe, "--verify-images", "--no-progress")
    assert code == 2, out
    for name in ("bomb.png", "big.png", "empty.png"): assert f"{name}" in out, (name, out)
    assert "3 of" in out and "too large to decode safely" in out and "48 MP" in out
    for name in ("bomb.png", "big.png"):
        with pytest.raises(ImageReadError, match=name): load_image(cls / name)
    Image.new("RGB", (4000, 3000), "red").save(cls / "huge.jpg", quality=50)   # a big JPEG decodes reduced
    assert max(load_image(cls / "huge.jpg").size) <= 2048


def _cub(tmp_path):
    from cskd_fastai.testing.replicas import make_cub
    root = make_cub(tmp_path / "cub", n_per_class=3, n_classes=3, n_test_per_class=2)
    return root, root / "CUB_200_2011"


@pytest.mark.parametrize("edit, words", [
    (lambda lines: [], ("images.txt lists nothing",)),
    (lambda lines: lines + [lines[0]], ("images.txt line", "repeats id 1 (first on line 1)")),
    (lambda lines: [lines[0].split()[0] + " ../../../etc/passwd"] + lines[1:], ("images.txt line 1", "outside the data root")),
    (lambda lines: [lines[0].split()[0] + " /etc/passwd"] + lines[1:], ("images.txt line 1", "outside the data root")),
])
def test_bad_cub_metadata_is_refused_naming_file_and_line(tmp_path, edit, words):
    root, base = _cub(tmp_path)
    lines = (base / "images.txt").read_text().splitlines()
    (base / "images.txt").write_text("\n".join(edit(lines)) + "\n")
    code, out = cli("check", _recipe(tmp_path / "r.yaml", "c", "cub", root))
    _one_error_line(code, out, *words)


def test_a_train_test_value_other_than_0_or_1_is_refused(tmp_path):
    root, base = _cub(tmp_path)
    lines = (base / "train_test_split.txt").read_text().splitlines()
    (base / "train_test_split.txt").write_text("\n".join([lines[0].split()[0] + " 2"] + lines[1:]) + "\n")
    _one_error_line(*cli("check", _recipe(tmp_path / "r.yaml", "c", "cub", root)), "train_test_split.txt", "value 2")


def test_an_empty_class_folder_is_dropped_with_a_warning_naming_it(tmp_path):
    from cskd_fastai.datasets import load_dataset
    from cskd_fastai.testing.replicas import make_imagefolder
    root = make_imagefolder(tmp_path / "d", n_per_class=4, n_classes=3, n_test_per_class=2)
    (root / "train" / "zz_empty").mkdir()
    with pytest.warns(UserWarning, match="train/zz_empty/ holds no image"):
        ds = load_dataset("imagefolder", root)
    assert "zz_empty" not in ds.classes and len(ds.classes) == 3


# ---- 5: one line for every error, output paths checked before any work -------------------------------------------
def test_cli_input_errors_are_one_line_naming_the_option(tmp_path, data_dir):
    recipe = _recipe(tmp_path / "r.yaml", "tiny", "imagefolder", data_dir)
    _one_error_line(*cli("train", tmp_path, "--out", tmp_path / "o"), "is a directory")
    _one_error_line(*cli("train", recipe, "--seed", "-1", "--out", tmp_path / "o"), "--seed -1", "from 0 to 2^32 - 1")
    _one_error_line(*cli("compare", recipe.parent, "--csv", tmp_path / "no" / "t.csv"), "--csv", "does not exist")
    (tmp_path / "afile").write_text("x")
    _one_error_line(*cli("train", recipe, "--out", tmp_path / "afile"), "--out", "is a file")
    for key in ("train.lr", "train.wd"):
        _one_error_line(*cli("check", recipe, "--set", f"{key}=.inf"), key, "finite")
    _one_error_line(*cli("check", recipe, "--set", "methods.0.teacher_weight=.inf"), "teacher_weight", "finite")
    bad = yaml.safe_load(recipe.read_text()); bad["train"]["epocs"] = bad["train"].pop("epochs")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(bad))
    _one_error_line(*cli("check", tmp_path / "typo.yaml"), "train.epocs: unknown key", "also: train.epochs")


def test_predict_bounds_the_temperature_and_escapes_formulas(best_run, tmp_path):
    from cskd_fastai.predict import csv_cell, write_csv
    images = sorted((best_run / "examples").glob("*.png"))[:1]
    _one_error_line(*cli("predict", best_run, *images, "--temperature", "1e-300"), "--temperature", "[0.001, 1000]")
    code, out = cli("predict", best_run, *images, "--temperature", "0.001")
    assert code == 0 and "nan" not in out.lower(), out
    write_csv([dict(path="=HYPERLINK(\"x\")", top=[("+cmd", 0.5)], T=1.0, error=None)], tmp_path / "f.csv")
    text = (tmp_path / "f.csv").read_text()
    assert "'=HYPERLINK" in text and "'+cmd" in text and csv_cell("bird") == "bird"


# ---- 6, 7: calibrated predictions from Python; what a new user tripped over -------------------------------------
def test_open_run_predicts_what_the_cli_prints(best_run, tmp_path):
    from cskd_fastai import open_run
    from cskd_fastai.predict import predict_files
    images = sorted((best_run / "examples").glob("*.png"))[:3]
    run = open_run(best_run)
    one, many = run.predict(images[0]), run.predict(images, coverage=0.5)
    cli_rows = predict_files(best_run, images)
    assert one["top"] == cli_rows[0]["top"] and [r["top"] for r in many] == [r["top"] for r in cli_rows]
    assert one["T"] == cli_rows[0]["T"] == run.T and "T =" in run.temperature_note
    assert all("set" in r for r in many)


def test_the_demo_applies_the_exact_fitted_temperature_and_says_each_thing_once(best_run):
    import math
    from cskd_fastai.app import applied_T, calibration_markdown, confidence_markdown
    from cskd_fastai.serving import load_model
    e = load_model(best_run)
    e.temperature = 0.9                                                 # a fitted T the 0.01 log-steps cannot hit
    assert applied_T(e, round(math.log10(0.9), 2)) == 0.9 and applied_T(e, 0.0) == 1.0
    z = e.test[0][0]
    assert "at T = 1 (" not in confidence_markdown(e, z, 1.0) and "at T = 0.9 (" in confidence_markdown(e, z, 0.9)
    one = calibration_markdown(e, 1.0)
    assert one.count("T = 1") == 1 and "no scaling" in one


def test_predicts_temperature_note_only_when_it_applies(best_run, caplog):
    import logging
    from cskd_fastai.serving import load_model
    e = load_model(best_run)
    if e.fit.trusted: pytest.skip("this run's fitted T is trusted: there is no note to show")
    images = sorted((best_run / "examples").glob("*.png"))[:1]
    for t, shown in (("fitted", True), ("none", False), ("2", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING): cli("predict", best_run, *images, "--temperature", t)
        assert ("is not applied" in caplog.text) == shown, (t, caplog.text)


def test_compare_labels_the_validation_split(best_run):
    code, out = cli("compare", best_run, "--split", "valid")
    assert code == 0 and out.startswith("**validation split**") and "(never on test)" not in out, out


@pytest.mark.parametrize("damage, words", [("nan", "not finite"), ("shape", "of shape")])
def test_compare_names_the_run_with_broken_logits(best_run, tmp_path, damage, words):
    run = shutil.copytree(best_run, tmp_path / "l")
    d = torch.load(run / "logits.pt", weights_only=True)
    if damage == "nan": d["test"]["logits"][0, 0] = float("nan")
    else: d["test"]["logits"] = d["test"]["logits"][:-1]
    torch.save(d, run / "logits.pt")
    _one_error_line(*cli("compare", run), str(run), words)


def test_a_garbage_recipe_yaml_is_one_line_naming_it(best_run, tmp_path):
    run = shutil.copytree(best_run, tmp_path / "g")
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": "x", "dataset": 3, "model": {}, "train": {}}))
    _one_error_line(*cli("eval", run), "recipe.yaml", "not a valid recipe")


def test_an_unknown_architecture_in_python_lists_the_names(tmp_path):
    from conftest import make_dls, write_folder
    from cskd_fastai import cskd_learner
    dls = make_dls(write_folder(tmp_path, {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}}), paired=False)
    with pytest.raises(ValueError, match="unknown architecture 'resnet181'.*efficientnet_lite0.*timm"):
        cskd_learner(dls, "resnet181")


def test_the_freeze_warning_points_at_the_callers_line(tmp_path):
    import warnings
    from conftest import make_dls, write_folder
    from cskd_fastai import plain_learner
    dls = make_dls(write_folder(tmp_path, {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}}), paired=False)
    learn = plain_learner(dls, "resnet18", pretrained=False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        learn.freeze()
    hits = [x for x in w if "randomly initialised body" in str(x.message)]
    assert hits and hits[0].filename == __file__, hits[0].filename if hits else w
