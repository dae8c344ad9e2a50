"""The demo app: prediction and calibration functions on two tiny real runs, bad input, and a real server.

The runs (a CE and a CS-KD run of one recipe) are trained once per module by `make_tiny_run` (~3 s each)."""
from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
from PIL import Image

from cskd_fastai.app import (MAX_SIDE, ModelEntry, calibration_figure, calibration_numbers, example_images,
                             facts_markdown,
                             load_models, predict, predict_logits, safe_image)
from cskd_fastai.metrics.calibration import apply_temperature
from cskd_fastai.metrics.functional import nll
from cskd_fastai.rundir import RunDirError
from cskd_fastai.testing.runs import TINY_CLASSES, free_port, make_tiny_run, serve

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "apps" / "demo.py"

# loading the runs' export.pkl is the point here (they are ours); fastai warns on every pickle it loads
pytestmark = pytest.mark.filterwarnings("ignore:load_learner:UserWarning")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [make_tiny_run(root, "ce", seed=0), make_tiny_run(root, "cskd", seed=0)]


@pytest.fixture(scope="module")
def entries(runs) -> list[ModelEntry]:
    return load_models(runs)


@pytest.fixture(scope="module")
def test_images(runs) -> list[Path]:
    data = runs[0].parents[1] / "data" / "test"
    return [sorted((data / c).glob("*.png"))[0] for c in TINY_CLASSES]


# ---- loading ------------------------------------------------------------------------------------------------


def test_load_models_reads_facts_classes_and_fits_T(entries):
    ce, cskd = entries
    assert [e.label for e in entries] == ["ce", "cskd-lam1-T4"]
    assert ce.classes == cskd.classes == list(TINY_CLASSES)
    assert cskd.facts["method"] == "cskd" and cskd.facts["lam"] == 1.0 and cskd.facts["temp"] == 4.0
    assert ce.facts["lam"] is None and ce.facts["dataset"] == "imagefolder" and ce.facts["epochs"] == 1
    assert 0 <= cskd.facts["test_top1_err"] <= 1
    for e in entries:   # the default T is the fit where the validation data supports it, else 1
        assert e.temperature == (e.fitted_temperature if e.fit.trusted else 1.0)
        assert e.degenerate_fit == (not e.fit.trusted) and e.fit.n == len(e.valid[1])
    # the tiny runs: CE's fit is trusted (17 of 45 wrong), CS-KD's is refused by the cross-validation
    assert ce.fit.trusted and ce.temperature != 1.0 and not cskd.fit.trusted and cskd.temperature == 1.0
    assert "cross-validation" in cskd.fit.reason and "not trusted" in facts_markdown(cskd)


def test_fitted_temperature_lowers_validation_nll(entries):
    for e in entries:
        z, y = e.valid
        best = float(nll(z / e.fitted_temperature, y))
        assert best < float(nll(z, y))  # T = 1 is where the fit starts; it must improve on it
        for other in (e.fitted_temperature * 1.2, e.fitted_temperature / 1.2):  # and be a minimum, not just any better T
            assert best <= float(nll(z / other, y)) + 1e-9


def test_separable_validation_set_keeps_T_1_by_default(runs, tmp_path):
    run = tmp_path / "separable"
    shutil.copytree(runs[1], run)
    d = torch.load(run / "logits.pt", weights_only=True)
    y = d["valid"]["labels"]
    d["valid"]["logits"] = 10.0 * torch.nn.functional.one_hot(y, len(TINY_CLASSES)).float()  # NLL -> 0 as T -> 0
    torch.save(d, run / "logits.pt")
    (e,) = load_models([run])
    assert e.degenerate_fit and e.fitted_temperature < 1.0 and e.temperature == 1.0
    assert calibration_numbers(e)["T"] == 1.0


def test_load_models_bad_run_dirs_are_one_line(runs, tmp_path):
    no_logits = tmp_path / "no_logits"
    shutil.copytree(runs[0], no_logits)
    (no_logits / "logits.pt").unlink()
    cases = {tmp_path / "missing": "does not exist", no_logits: "missing logits.pt"}
    for path, words in cases.items():
        with pytest.raises(RunDirError, match=words) as ei:
            load_models([runs[1], path])
        assert "\n" not in str(ei.value)
    with pytest.raises(RunDirError, match="no run directory"):
        load_models([])


def test_unfinished_and_tampered_runs_are_refused_before_unpickling(runs, tmp_path):
    unfinished = tmp_path / "unfinished"; shutil.copytree(runs[0], unfinished); (unfinished / "DONE").unlink()
    with pytest.raises(RunDirError, match="unfinished"): load_models([unfinished])
    # an export.pkl replaced by a pickle that runs code: refused on its hash, and the code never runs
    evil = tmp_path / "evil"; shutil.copytree(runs[0], evil)
    marker = tmp_path / "pwned"
    (evil / "export.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(RunDirError, match="does not match the SHA-256") as ei: load_models([evil])
    assert not marker.exists() and "\n" not in str(ei.value)
    truncated = tmp_path / "truncated"; shutil.copytree(runs[0], truncated)
    data = (truncated / "export.pkl").read_bytes(); (truncated / "export.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match=f"{truncated / 'export.pkl'} does not match"): load_models([truncated])
    unrecorded = tmp_path / "unrecorded"; shutil.copytree(runs[0], unrecorded); (unrecorded / "hashes.json").unlink()
    with pytest.raises(RunDirError, match="no recorded SHA-256"): load_models([unrecorded])
    corrupt = tmp_path / "corrupt"; shutil.copytree(runs[0], corrupt)
    (corrupt / "metrics.json").write_text('{"valid": {"top1_err": 0.1,, }')
    with pytest.raises(RunDirError, match=f"{corrupt / 'metrics.json'} is corrupt"): load_models([corrupt])


class _Boom:
    "Unpickling this touches a file: the proof that a pickle was loaded."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("p,text", [(0.997, "99.7%"), (0.003, "0.3%"), (0.0004, "<0.1%"), (0.99996, ">99.9%"),
                                    (0.5, "50.0%"), (0.0, "<0.1%"), (1.0, ">99.9%")])
def test_probabilities_keep_useful_precision(p, text):
    from cskd_fastai.app import fmt_prob
    assert fmt_prob(p) == text


def test_confidence_panel_precision_truth_and_unusual_input_hint(entries):
    from cskd_fastai.app import confidence_markdown, unusual_confidence
    e = entries[0]
    z = torch.tensor([6.0, 0.0, -2.0])                       # confident: 99.7% / 0.2% / <0.1%
    md = confidence_markdown(e, z, 1.0, k=3, true_class=e.classes[1])
    assert "| cat | 99.7% |" in md.replace(e.classes[0], "cat") and "<0.1%" in md and "wrong" in md
    assert "Unfamiliar image" not in md
    flat = torch.zeros(3)                                      # 33% each: below 95% of validation images
    flag, floor = unusual_confidence(e, flat)
    assert flag and floor > 1 / 3
    assert "Unfamiliar image" in confidence_markdown(e, flat, 1.0)
    # the threshold keeps 95% of the validation images (at the run's T) at or above it, and no higher one does
    ref = apply_temperature(e.valid[0], e.temperature).amax(1).double()
    assert float((ref >= floor - 1e-6).double().mean()) >= 0.95 and float((ref > floor + 1e-6).double().mean()) < 0.95


def test_duplicate_labels_get_told_apart(runs):
    a, b = load_models([runs[1], runs[1]])
    assert a.label != b.label


# ---- predictions --------------------------------------------------------------------------------------------


def test_predict_sums_to_one_and_is_sorted(entries, test_images):
    C = len(TINY_CLASSES)
    for img in test_images:
        for out in predict(entries, img, temps=None, k=C):
            assert set(out) == set(TINY_CLASSES)
            assert sum(out.values()) == pytest.approx(1.0, abs=1e-5)
            assert list(out.values()) == sorted(out.values(), reverse=True)
    assert [len(d) for d in predict(entries, test_images[0], [1.0, 2.0], k=2)] == [2, 2]


def test_T1_equals_the_learners_own_probabilities(entries, test_images):
    for e in entries:
        for img in test_images:
            _, _, probs = e.learn.predict(img)
            ours = predict([e], img, temps=[1.0], k=len(e.classes))[0]
            assert [ours[c] for c in e.classes] == pytest.approx(probs.tolist(), abs=1e-6)


def test_channels_last_inference_keeps_the_numbers(entries, test_images):
    "The app runs models in channels_last (faster on CPU); the logits must match the plain contiguous layout."
    import copy
    for e in entries:
        convs = [m for m in e.learn.model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        plain = copy.deepcopy(e.learn.model).to(memory_format=torch.contiguous_format).eval()
        assert not convs[0].weight.is_contiguous() or convs[0].weight.shape[-1] == 1  # really another layout
        for img in test_images:
            xb = e.learn.dls.test_dl([img], num_workers=0).one_batch()[0]
            with torch.inference_mode(): ref = plain(xb.contiguous())[0]
            assert torch.allclose(predict_logits(e, img), ref.as_subclass(torch.Tensor), atol=1e-5, rtol=1e-5)


def test_temperature_divides_raw_logits(entries, test_images):
    e = entries[1]
    z = predict_logits(e, test_images[0])
    assert type(z) is torch.Tensor and z.shape == (len(e.classes),)
    for T in (0.5, 3.0):
        out = predict([e], test_images[0], temps=[T], k=len(e.classes))[0]
        expect = torch.softmax(z / T, 0)
        assert [out[c] for c in e.classes] == pytest.approx(expect.tolist(), abs=1e-6)
    hot, cold = (predict([e], test_images[0], [T], k=1)[0] for T in (0.5, 3.0))
    assert max(hot.values()) > max(cold.values())  # a lower T sharpens, a higher one flattens


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "1", "CMYK", "I;16"])
def test_modes_convert_to_rgb_and_predict(entries, test_images, mode, tmp_path):
    rgb = Image.open(test_images[0]).convert("RGB")
    im = rgb.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    f = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    im.save(f)
    for src in (im, f):
        out = safe_image(src)
        assert out.mode == "RGB" and out.size == rgb.size
    probs = predict(entries, f, None, k=len(TINY_CLASSES))
    assert all(sum(p.values()) == pytest.approx(1.0, abs=1e-5) for p in probs)


def test_rgba_transparency_becomes_white_not_black():
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert safe_image(im).getpixel((0, 0)) == (255, 255, 255)


def test_inputs_of_every_kind(test_images):
    ref = np.asarray(safe_image(test_images[0]))
    for src in (str(test_images[0]), test_images[0].read_bytes(), Image.open(test_images[0]), ref,
                ref.astype(np.float32) / 255):
        assert np.array_equal(np.asarray(safe_image(src)), ref)
    big = safe_image(Image.new("RGB", (3000, 1500), (10, 20, 30)))
    assert big.size == (MAX_SIDE, MAX_SIDE // 2)  # downscaled, aspect ratio kept


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def bad_inputs(test_images, tmp_path) -> dict:
    png = test_images[0].read_bytes()
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 6000)).save(huge)  # 54 MP: refused from the header, before decoding
    return {"not an image": _write(tmp_path / "notes.png", b"just some text, not pixels"),
            "corrupt or truncated": _write(tmp_path / "cut.png", png[: len(png) // 2]),
            "over the 40 MP limit": huge,
            "no image file": tmp_path / "missing.png",
            "no image:": None,
            "got dict": {"path": "x.png"},
            "image array": np.zeros((4, 4, 2), np.uint8)}


def test_bad_inputs_give_one_line_value_errors(bad_inputs, entries):
    for words, src in bad_inputs.items():
        with pytest.raises(ValueError, match=words) as ei:
            safe_image(src)
        assert "\n" not in str(ei.value)
    with pytest.raises(ValueError, match="not an image"):
        predict(entries, bad_inputs["not an image"], None, k=3)


# ---- calibration --------------------------------------------------------------------------------------------


def test_calibration_numbers_match_the_runs_metrics(entries):
    import json
    for e in entries:
        c = calibration_numbers(e)  # at the fitted T
        stored = json.loads((e.path / "metrics.json").read_text())["test"]
        assert c["ece_before"] == pytest.approx(stored["ece"]) and c["nll_before"] == pytest.approx(stored["nll"])
        assert c["T"] == e.temperature and c["n"] == len(e.test[1])
        same = calibration_numbers(e, 1.0)
        assert same["ece_after"] == pytest.approx(same["ece_before"]) and same["nll_after"] == pytest.approx(same["nll_before"])
        z, y = e.test
        assert calibration_numbers(e, 2.0)["nll_after"] == pytest.approx(float(nll(z / 2.0, y)))
    with pytest.raises(ValueError, match="temperature"):
        calibration_numbers(entries[0], 0.0)


def test_calibration_figure_has_three_panels(entries):
    fig = calibration_figure(entries[1], 1.7)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Before: T = 1", "After: T = 1.7", "Confidence at T = 1.7"]


def test_example_images_come_from_the_run_dirs_only(entries, runs, tmp_path):
    ex = example_images(entries, n=4)
    assert len(ex) == 4 and {c for _, c in ex} == set(TINY_CLASSES)  # spread over the classes first
    assert all(p.suffix == ".png" and Image.open(p).mode == "RGB" for p, _ in ex)
    assert all(p.parent == runs[0] / "examples" for p, _ in ex)  # both runs store the same images: no duplicates
    # a run without stored examples shows none, although its recipe names a reachable data root
    bare = tmp_path / "bare"; shutil.copytree(runs[0], bare); shutil.rmtree(bare / "examples")
    data_root = yaml.safe_load((runs[0] / "recipe.yaml").read_text())["dataset"]["root"]
    assert Path(data_root).is_dir()
    e = ModelEntry(bare, "x", None, [], recipe={"dataset": {"name": "imagefolder", "root": data_root}})
    assert example_images([e], n=4) == []
    # examples.json naming a file outside the folder is ignored
    (bare / "examples").mkdir()
    (bare / "examples" / "examples.json").write_text(json.dumps([{"file": "../recipe.yaml", "class": "cat"},
                                                                  {"file": "/etc/passwd", "class": "dog"}]))
    assert example_images([e], n=4) == []


# ---- the command line and a real server ---------------------------------------------------------------------


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo_cli", DEMO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_bad_run_dirs_are_one_line_and_exit_2(runs, tmp_path, capsys):
    # in-process (the server test below runs the script for real): a subprocess would spend ~10 s on imports
    no_logits = tmp_path / "no_logits"
    shutil.copytree(runs[0], no_logits)
    (no_logits / "logits.pt").unlink()
    for bad, words in ((tmp_path / "missing", "does not exist"), (no_logits, "missing logits.pt")):
        assert _demo_module().main([str(runs[1]), str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"demo: error: run dir {bad}") and words in err[0]


@pytest.mark.slow
def test_server_predicts_through_gradio_client(runs, test_images, bad_inputs):
    from gradio_client import Client, handle_file
    port = free_port()
    argv = [sys.executable, str(DEMO), *map(str, runs), "--port", str(port)]
    with serve(argv, f"http://127.0.0.1:{port}/") as url:
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        status, ce, cskd, ce_conf, cskd_conf = client.predict(handle_file(str(test_images[1])), 3, "90%", 0.0, 0.0,
                                                              api_name="/predict")
        assert status.startswith("Predicted")
        for lab, conf in ((ce, ce_conf), (cskd, cskd_conf)):
            assert {c["label"] for c in lab["confidences"]} == set(TINY_CLASSES)
            assert sum(c["confidence"] for c in lab["confidences"]) == pytest.approx(1.0, abs=1e-4)
            assert lab["label"] in TINY_CLASSES and f"**{lab['label']}**" in conf
            assert "90% prediction set" in conf and "images like the calibration" in conf   # the set and its meaning
        # bad uploads: a clear status line, no labels, and the server keeps serving
        for words in ("not an image", "corrupt or truncated"):
            status, ce, *_ = client.predict(handle_file(str(bad_inputs[words])), 3, "90%", 0.0, 0.0, api_name="/predict")
            assert words in status and not ce
        status, ce, *_ = client.predict(handle_file(str(test_images[0])), 2, "off", 0.0, 0.0, api_name="/predict")
        assert status.startswith("Predicted") and len(ce["confidences"]) == 2
        # a path on the server that no client uploaded: the same refusal whether the file exists (an image,
        # or not) or not, and no prediction
        replies = [_raw_predict(url, p) for p in (str(test_images[2]), str(runs[0] / "recipe.yaml"),
                                                  "/nonexistent/file.png")]
        paths = (str(test_images[2]), str(runs[0] / "recipe.yaml"), "/nonexistent/file.png")
        texts = [json.dumps(r).replace(p, "PATH") for r, p in zip(replies, paths)]
        assert len(set(texts)) == 1, texts   # nothing tells an existing file from a missing one
        # gradio >= 6 refuses such paths itself; older ones reach our own guard (tested below without a server)
        assert "not uploaded" in texts[0] or "Cannot use this input" in texts[0]
        assert "confidences" not in texts[0]


def test_image_input_reads_only_uploaded_or_example_files(runs, test_images, tmp_path, monkeypatch):
    "The app's own guard on the image input's payload (gradio versions that move any server path into the cache)."
    import gradio as gr
    from gradio.data_classes import FileData
    from cskd_fastai.app import REFUSED, _guard_input
    uploads = tmp_path / "uploads"; (uploads / "abc").mkdir(parents=True)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    shutil.copy(test_images[0], uploads / "abc" / "up.png")
    (uploads / "abc" / "link.png").symlink_to(test_images[1])   # a link inside the cache pointing out of it
    image = gr.Image(type="filepath")
    _guard_input(image, [runs[0] / "examples"])
    ok = image.preprocess(FileData(path=str(uploads / "abc" / "up.png")))
    assert ok != REFUSED and Path(ok).is_file()
    assert image.preprocess(FileData(path=str(runs[0] / "examples" / "00.png"))) != REFUSED
    for p in (test_images[2], runs[0] / "recipe.yaml", "/nonexistent/file.png", uploads / "abc" / "link.png",
              uploads / ".." / "uploads" / ".." / "evil.png"):
        assert image.preprocess(FileData(path=str(p))) == REFUSED, p


def _raw_predict(url: str, path: str) -> list:
    "POST /gradio_api/call/predict with a FileData naming a server path (what a hostile API client sends)."
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    body = json.dumps({"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 3, "90%", 0.0, 0.0]}).encode()
    req = urllib.request.Request(f"{url}gradio_api/call/predict", body, {"Content-Type": "application/json"})
    with opener.open(req, timeout=30) as r: event = json.loads(r.read())["event_id"]
    with opener.open(f"{url}gradio_api/call/predict/{event}", timeout=60) as r: text = r.read().decode()
    data = [l[len("data:"):].strip() for l in text.splitlines() if l.startswith("data:")]
    return json.loads(data[-1])
