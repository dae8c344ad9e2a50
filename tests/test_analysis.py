"Analyses of issue 7: Recall@k, intra-class variation and over-confidence against hand computations; end to end on runs."
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cskd_fastai.analysis import (analyze_run, analyze_runs, embed, intra_class_stats,
                                  overconfidence, recall_at_k)
from cskd_fastai.embeddings import _embedding_module


def _polar(deg: float, r: float = 1.0) -> list[float]:
    return [r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))]


# ----------------------------------------------------------------------------------------------------------
# Recall@k

# Case "angles": points given by angle (radius varies: cosine ignores it), labels in brackets:
#   A 0° [0], B 10° [0], C 25° [1], D 90° [1], E 200° [2] (E alone in its class).
# Angular distances give each query's neighbour order:
#   A: B(10) C(25) D(90) E(160)   -> nearest B, same class: hit at k=1
#   B: A(10) C(15) D(80) E(170)   -> A: hit at k=1
#   C: B(15) A(25) D(65) E(175)   -> first class-1 neighbour is D at rank 3: hit from k=3
#   D: C(65) B(80) A(90) E(110)   -> C: hit at k=1
#   E: D(110) A(160) B(170) C(175) -> no other class-2 point: never a hit
# R@1 = R@2 = 3/5, R@4 = 4/5, R@8 is clipped to k = N-1 = 4: 4/5.
ANGLES = ([_polar(0, 1), _polar(10, 2), _polar(25, 0.5), _polar(90, 3), _polar(200, 1)], [0, 0, 1, 1, 2],
          {1: 0.6, 2: 0.6, 4: 0.8, 8: 0.8})
# Case "separated": two tight clusters on the axes -> every nearest neighbour is of the own class.
SEPARATED = ([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], [0, 0, 1, 1], {1: 1.0, 2: 1.0, 4: 1.0})
# Case "interleaved": same points, labels alternate (angles 0°, 5.71°, 90°, 84.29°):
#   (1,0)[0]:   (1,.1)[1] 5.71°, (.1,1)[1] 84.29°, (0,1)[0] 90°  -> hit from k=3
#   (1,.1)[1]:  (1,0)[0] 5.71°,  (.1,1)[1] 78.58°                -> hit from k=2
#   (0,1)[0]:   (.1,1)[1] 5.71°, (1,.1)[1] 84.29°, (1,0)[0] 90°  -> hit from k=3
#   (.1,1)[1]:  (0,1)[0] 5.71°,  (1,.1)[1] 78.58°                -> hit from k=2
# R@1 = 0, R@2 = 2/4, R@4 (clipped to 3) = 1.
INTERLEAVED = ([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], [0, 1, 0, 1], {1: 0.0, 2: 0.5, 4: 1.0})


@pytest.mark.parametrize("emb,labels,expected", [ANGLES, SEPARATED, INTERLEAVED],
                         ids=["angles", "separated", "interleaved"])
@pytest.mark.parametrize("chunk", [1024, 2], ids=["one-chunk", "chunked"])
def test_recall_at_k_by_hand(emb, labels, expected, chunk):
    got = recall_at_k(torch.tensor(emb), torch.tensor(labels), ks=tuple(expected), chunk=chunk)
    assert got == pytest.approx(expected)
    # numpy inputs give the same answer
    assert recall_at_k(np.array(emb), np.array(labels), ks=tuple(expected)) == pytest.approx(expected)


def test_recall_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        recall_at_k(torch.ones(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        recall_at_k(torch.ones(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(torch.ones(3, 2), torch.zeros(3, dtype=torch.long), ks=(0,))


# ----------------------------------------------------------------------------------------------------------
# intra-class statistics

# Case "plane" (raw 2-D vectors):
#   class 0: (1,0), (3,0)  mean (2,0): sq. distances 1, 1 -> var 1; distances 1, 1 -> intra 1; same direction -> cos 0
#   class 1: (0,4), (4,4)  mean (2,4): sq. distances 4, 4 -> var 4; intra 2; cos(90°, 45°) = 1/√2 -> 1 - 0.70711
#   class 2: (10,0) alone  -> left out of var/cos/intra, its mean (10,0) still counts for inter
# var = (1+4)/2 = 2.5, cos = 0.29289/2 = 0.146447, intra = (1+2)/2 = 1.5,
# inter = mean(|(2,0)-(2,4)| = 4, |(2,0)-(10,0)| = 8, |(2,4)-(10,0)| = √80 = 8.94427) = 6.98142,
# ratio = 1.5 / 6.98142 = 0.214857, n_classes = 2.
PLANE = ([[1, 0], [3, 0], [0, 4], [4, 4], [10, 0]], [0, 0, 1, 1, 2],
         dict(variance=2.5, cos_dist=(1 - 1 / math.sqrt(2)) / 2, intra_dist=1.5,
              inter_dist=(4 + 8 + math.sqrt(80)) / 3, ratio=1.5 / ((4 + 8 + math.sqrt(80)) / 3), n_classes=2))
# Case "probs" (predictive distributions over 3 classes):
#   class 0: (1,0,0), (.5,.5,0)  mean (.75,.25,0): sq. distances .0625+.0625 = .125 each -> var .125,
#            distance √.125 = .353553; cos of the two = 1/√2 -> cos dist .29289
#   class 1: (0,1,0) twice -> var 0, intra 0, cos 0
# var = .0625, cos = .146447, intra = .176777, inter = |(.75,.25,0)-(0,1,0)| = √1.125 = 1.06066, ratio = 1/6.
PROBS = ([[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 1, 0]], [0, 0, 1, 1],
         dict(variance=0.0625, cos_dist=(1 - 1 / math.sqrt(2)) / 2, intra_dist=math.sqrt(0.125) / 2,
              inter_dist=math.sqrt(1.125), ratio=1 / 6, n_classes=2))
# Case "unit" (L2-normalized embeddings): for unit vectors var = 1 - |mean|^2.
#   class 0: (1,0), (0,1)   mean (.5,.5):   var 1 - .5 = .5, distance √.5 each, orthogonal -> cos dist 1
#   class 1: (-1,0), (0,-1) mean (-.5,-.5): same
# var = .5, cos = 1, intra = √.5 = .70711, inter = |(1,1)| = √2, ratio = .5.
UNIT = ([[1, 0], [0, 1], [-1, 0], [0, -1]], [0, 0, 1, 1],
        dict(variance=0.5, cos_dist=1.0, intra_dist=math.sqrt(0.5), inter_dist=math.sqrt(2), ratio=0.5, n_classes=2))


@pytest.mark.parametrize("x,labels,expected", [PLANE, PROBS, UNIT], ids=["plane", "probs", "unit"])
def test_intra_class_stats_by_hand(x, labels, expected):
    got = intra_class_stats(torch.tensor(x, dtype=torch.float32), torch.tensor(labels))
    assert got == pytest.approx(expected, rel=1e-5)


def test_intra_class_stats_undefined_is_nan():
    got = intra_class_stats(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))  # two singletons
    assert math.isnan(got["variance"]) and math.isnan(got["cos_dist"]) and math.isnan(got["ratio"])
    assert got["inter_dist"] == pytest.approx(math.sqrt(2)) and got["n_classes"] == 0


# ----------------------------------------------------------------------------------------------------------
# over-confidence

# logits = log p, so the softmax gives p back exactly:
#   s0 p=(.95,.03,.02) y=0: correct, conf .95
#   s1 p=(.92,.05,.03) y=1: wrong,   conf .92 > .9  -> over-confident error
#   s2 p=(.50,.30,.20) y=2: wrong,   conf .50
#   s3 p=(.10,.20,.70) y=2: correct, conf .70
#   s4 p=(.89,.07,.04) y=1: wrong,   conf .89, just below .9
# errors 3/5, over-confident 1/5 of all and 1/3 of errors; mean conf correct (.95+.7)/2, wrong (.92+.5+.89)/3.
P = [[0.95, 0.03, 0.02], [0.92, 0.05, 0.03], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.89, 0.07, 0.04]]
Y = [0, 1, 2, 2, 1]


@pytest.mark.parametrize("threshold,n_over", [(0.9, 1), (0.95, 0), (0.4, 3)])
def test_overconfidence_by_hand(threshold, n_over):
    got = overconfidence(torch.tensor(P).log(), torch.tensor(Y), threshold=threshold)
    assert got["n"] == 5 and got["n_errors"] == 3 and got["error_rate"] == pytest.approx(0.6)
    assert got["n_overconfident"] == n_over
    assert got["overconfident_rate"] == pytest.approx(n_over / 5)
    assert got["overconfident_frac_of_errors"] == pytest.approx(n_over / 3)
    assert got["mean_conf_correct"] == pytest.approx((0.95 + 0.7) / 2)
    assert got["mean_conf_wrong"] == pytest.approx((0.92 + 0.5 + 0.89) / 3)


def test_overconfidence_without_errors():
    got = overconfidence(torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 1]))
    assert got["n_errors"] == 0 and got["overconfident_rate"] == 0
    assert math.isnan(got["overconfident_frac_of_errors"]) and math.isnan(got["mean_conf_wrong"])


# ----------------------------------------------------------------------------------------------------------
# embedding hook


def test_embedding_module_finds_the_classifier():
    from torchvision.models import resnet18
    from fastai.vision.learner import create_vision_model
    tv = resnet18(num_classes=3)
    assert _embedding_module(tv) is tv.fc
    va = create_vision_model(resnet18, 3, pretrained=False)  # what vision_learner builds: Sequential(body, head)
    assert _embedding_module(va) is [m for m in va[1].modules() if isinstance(m, torch.nn.Linear)][-1]


# ----------------------------------------------------------------------------------------------------------
# end to end on two tiny runs (CE and CS-KD)

N_CLASSES, N_TEST_PER_CLASS = 3, 4


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    "Tiny tensors on 2 cores shared with other jobs: OpenMP spin-waits make each op 10-20x slower with 2 threads."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train_run(run_dir: Path, data: Path, method: str) -> Path:
    "Train 1 epoch of torchvision resnet18 on the replica and write a finished run directory (rundir layout)."
    from fastai.vision.all import (CategoryBlock, DataBlock, GrandparentSplitter, ImageBlock, Resize,
                                   get_image_files, parent_label)
    from torchvision.models import resnet18
    from cskd_fastai import cskd_learner, plain_learner
    from cskd_fastai.datasets import load_dataset
    from cskd_fastai.metrics import classification_metrics
    from cskd_fastai.rundir import record_hash
    torch.manual_seed(0)
    db = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                   splitter=GrandparentSplitter(valid_name="test"), item_tfms=Resize(16))
    dls = db.dataloaders(data, bs=4, num_workers=0, device="cpu")
    make = cskd_learner if method == "cskd" else plain_learner
    learn = make(dls, resnet18, pretrained=False)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    # the CLI stores test logits in `load_dataset` order (get_image_files' order is the file system's)
    test = load_dataset("imagefolder", data).test
    logits, _ = learn.get_preds(dl=learn.dls.test_dl(test.items), act=lambda x: x)
    labels = torch.tensor(test.labels)  # vocab = sorted folder names = the loader's classes
    run_dir.mkdir(parents=True)
    split = {"logits": logits.float(), "labels": labels.long()}
    torch.save({"valid": split, "test": split, "classes": list(dls.vocab)}, run_dir / "logits.pt")
    m = classification_metrics(logits, labels)
    (run_dir / "metrics.json").write_text(json.dumps({"valid": m, "test": m, "facts": {"label": method}}))
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(
        {"dataset": {"name": "imagefolder", "root": str(data), "image_size": 16}, "method": method}))
    learn.export(run_dir.resolve() / "export.pkl")
    record_hash(run_dir, "export.pkl")   # as `train` does: the export is loaded only once its hash matches
    (run_dir / "DONE").write_text("")
    return run_dir


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> tuple[Path, list[Path]]:
    from cskd_fastai.testing.replicas import make_imagefolder
    base = tmp_path_factory.mktemp("analysis")
    data = make_imagefolder(base / "data", n_per_class=4, n_classes=N_CLASSES, n_test_per_class=N_TEST_PER_CLASS)
    return data, [_train_run(base / "runs" / m, data, m) for m in ("ce", "cskd")]


def test_embed_shapes(tiny_runs):
    from cskd_fastai.datasets import load_dataset
    from cskd_fastai.rundir import load_run_learner
    data, runs = tiny_runs
    learn = load_run_learner(runs[0])
    items = load_dataset("imagefolder", data).test.items
    emb, logits = embed(learn, items, bs=5)  # 12 items in batches of 5: the last batch is partial
    assert emb.shape == (len(items), 512) and logits.shape == (len(items), N_CLASSES)
    assert emb.dtype == logits.dtype == torch.float32
    # eval mode: the same items give the same numbers, and they match fastai's own predictions
    ref, _ = learn.get_preds(dl=learn.dls.test_dl(items), act=lambda x: x)
    assert torch.allclose(logits, ref, atol=1e-5)


def test_analyze_runs_end_to_end(tiny_runs, tmp_path):
    data, runs = tiny_runs
    report = analyze_runs(runs, tmp_path / "out")
    assert report == tmp_path / "out" / "report.md" and report.exists()
    assert (tmp_path / "out" / "embeddings.png").stat().st_size > 0
    text = report.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ce |") or ln.startswith("| cskd |")]
    assert len(rows) == 2
    n = N_CLASSES * N_TEST_PER_CLASS
    for name in ("ce", "cskd"):
        d = tmp_path / "out" / name
        assert (d / "confidence.png").stat().st_size > 0 and (d / "tsne.png").stat().st_size > 0
        a = json.loads((d / "analysis.json").read_text())
        assert a["label"] == name and a["n_test"] == n and a["n_classes"] == N_CLASSES
        rec = [a["recall"][f"R@{k}"] for k in (1, 2, 4, 8)]
        assert all(0 <= r <= 1 for r in rec) and rec == sorted(rec)  # R@k never decreases with k
        for kind in ("probs", "embeddings"):
            s = a["intra_class"][kind]
            assert 0 <= s["variance"] <= 1 and 0 <= s["cos_dist"] <= 2 and s["ratio"] >= 0
            assert s["n_classes"] == N_CLASSES
        o = a["overconfidence"]
        assert 0 <= o["overconfident_rate"] <= o["error_rate"] <= 1
        assert o["n_errors"] == round(a["metrics"]["top1_err"] * n)
        # our re-embedded test set is the one the run stored at training time
        assert a["stored_logits"]["labels_match"] and a["stored_logits"]["max_abs_diff"] < 1e-3


def test_analyze_run_max_items(tiny_runs, tmp_path):
    _, runs = tiny_runs
    res = analyze_run(runs[1], tmp_path, max_items=6)
    assert res["n_test"] == 6 and (tmp_path / "cskd" / "analysis.json").exists()
    assert set(res["tsne"][1].tolist()) == set(range(N_CLASSES))  # evenly spaced subset keeps every class


def test_unreachable_data_root_is_one_clear_line(tiny_runs, tmp_path):
    _, runs = tiny_runs
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError) as e:
        analyze_runs(runs, tmp_path / "out", data_root=missing)
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg and "--data-root" in msg


def test_confidence_histogram_counts_on_a_log_scale():
    "A few wrong, confident predictions stay visible next to many right ones: the count axis is logarithmic."
    from cskd_fastai.analysis import confidence_figure
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (2000,), generator=g)
    z = torch.nn.functional.one_hot(y, 10).float() * 8
    z[:5] = torch.nn.functional.one_hot((y[:5] + 1) % 10, 10).float() * 8     # 5 confident errors among 2,000
    ax = confidence_figure(z, y).axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "wrong (5)" in labels and "correct (1995)" in labels
