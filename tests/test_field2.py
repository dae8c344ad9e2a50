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


@pytest.mark.parametrize("table, words", [([1, 2], "not a table"), ({"export.pkl": 5}, "not a list of SHA-256"),
                                          ({"export.pkl": [None]}, "not a list of SHA-256")])
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
