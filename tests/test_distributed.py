"""Multi-process training on CPU (gloo), through torchrun and fastai's distrib_ctx: 2 ranks, one epoch, tiny data.

Every training image is one flat colour whose red value is its index and whose green value encodes its class, so a
callback inside each rank can read which anchors and partners that rank trained on, whatever the loader did.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cskd_fastai.distributed import free_port, launch_command

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("ant", "bee", "cow")
N_TRAIN = (7, 7, 5)          # valid_pct 0.25 -> 2 + 2 + 1 = 5 valid (odd: padded on 2 ranks), 14 train (even)
N_TEST = 3                   # 9 test images (odd)

# Runs in each rank: the real `cskd-fastai train` command, with a recording callback added to the learner.
WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    import cskd_fastai.train as T
    from fastai.callback.core import Callback
    from cskd_fastai.callbacks.cskd import CSKD
    from fastai.vision.core import imagenet_stats

    rank, rec_dir = int(os.environ["RANK"]), sys.argv[1]
    MEAN, STD = torch.tensor(imagenet_stats[0])[:, None, None], torch.tensor(imagenet_stats[1])[:, None, None]

    class Record(Callback):
        "Anchor/partner item ids and labels of every training batch, read from the pixels before CSKD splits them."
        order = CSKD.order - 1
        def __init__(self): self.batches, self.store, self.stats = [], None, {}
        def before_batch(self):
            if not self.training or not hasattr(self.learn, "cskd"): return   # the paired (CS-KD) run only
            px = ((self.xb[0][:, :, 0, 0].float().cpu() * STD[:, 0, 0] + MEAN[:, 0, 0]) * 255).round().long()
            y = self.yb[0].cpu().tolist(); b = len(y) // 2
            ids, cls = px[:, 0].tolist(), (px[:, 1] // 60).tolist()
            self.batches.append(dict(anchors=ids[:b], partners=ids[b:], y_anchor=y[:b], y_partner=y[b:],
                                     pix_cls_anchor=cls[:b], pix_cls_partner=cls[b:]))
        def after_epoch(self):   # each KD callback's logged training statistics, after any reduction
            for name in ("cskd", "stored_cskd"):
                cb = getattr(self.learn, name, None)
                if cb is not None and cb._sums is not None:   # get_preds runs after_epoch too
                    self.stats[name] = dict(cb.epoch_stats(), n_anchors=float(cb._sums[-1]))
        def after_fit(self):   # the cskd_stored run: its per-sample store as this rank ends it
            cb = getattr(self.learn, "stored_cskd", None)
            if cb is not None: self.store = dict(seen=cb.seen.tolist(), store=cb.store.tolist())

    rec = Record()
    orig = T.build_learner
    def build_learner(recipe, dls, path):
        learn = orig(recipe, dls, path); learn.add_cb(rec); return learn
    T.build_learner = build_learner

    from cskd_fastai.cli import app
    app(sys.argv[4:], standalone_mode=False)
    json.dump(dict(rank=rank, world=int(os.environ["WORLD_SIZE"]), batches=rec.batches, store=rec.store, stats=rec.stats),
              open(os.path.join(rec_dir, f"rank{rank}.json"), "w"))

    # fastai's gather in DistributedDL.to_detach for get_preds: both ranks predict their slice of the test set
    from cskd_fastai import distributed as D
    from cskd_fastai.rundir import load_run_learner
    from cskd_fastai.pipeline import load_data
    from cskd_fastai.recipe import load_recipe
    from fastcore.basics import noop
    run_dir = sys.argv[2]
    learn = load_run_learner(run_dir)
    data = load_data(load_recipe(sys.argv[3]).dataset)
    dl = learn.dls.test_dl(list(data.test.items), bs=64, num_workers=0)
    with D.distrib_ctx(learn), learn.no_bar(), learn.no_logging():
        preds, _ = learn.get_preds(dl=dl, act=noop)
    if rank == 0: torch.save(preds, os.path.join(rec_dir, "gathered_preds.pt"))
''')


def _write_data(root: Path) -> Path:
    "Flat-colour PNGs: red = a unique training index (train) or 200 + i (test), green = 60 x class."
    i = 0
    for split, counts in (("train", N_TRAIN), ("test", (N_TEST,) * 3)):
        for c, (name, n) in enumerate(zip(CLASSES, counts)):
            d = root / split / name; d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                red = i if split == "train" else 200 + i
                img = np.zeros((8, 8, 3), np.uint8); img[..., 0], img[..., 1], img[..., 2] = red, 60 * c + 10, 128
                Image.fromarray(img).save(d / f"{name}_{k}.png"); i += 1
    return root


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    data = _write_data(base / "data")
    recipe = base / "r.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        name="ddp", dataset=dict(name="imagefolder", root=str(data), image_size=8, valid_pct=0.25),
        model=dict(arch="small_cnn"), methods=[dict(name="cskd", lam=1.0), dict(name="cskd_stored", lam=1.0)],
        seeds=[0],
        train=dict(epochs=1, bs=3, lr=0.05, schedule="constant", augment="none"))))
    (base / "rec").mkdir()
    (base / "worker.py").write_text(WORKER)
    out = base / "runs"
    run_dir = out / "ddp" / "cskd-lam1-T4" / "seed0"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(base / "worker.py"), str(base / "rec"),
           str(run_dir), str(recipe), "train", str(recipe), "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=base)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    return dict(base=base, run_dir=run_dir, recipe=recipe, stdout=r.stdout,
                ranks=[json.loads((base / "rec" / f"rank{k}.json").read_text()) for k in range(2)])


def test_ranks_train_disjoint_anchors_with_same_class_partners(ddp_run):
    ranks = ddp_run["ranks"]
    assert [r["world"] for r in ranks] == [2, 2] and all(r["batches"] for r in ranks)
    seen = [sorted(a for b in r["batches"] for a in b["anchors"]) for r in ranks]
    assert not set(seen[0]) & set(seen[1])                                  # each rank its own anchors
    assert len(seen[0]) == len(seen[1]) == 7 and len(set(seen[0] + seen[1])) == 14   # together: the train split
    id_cls = {}
    i = 0
    for c, n in enumerate(N_TRAIN):
        for _ in range(n): id_cls[i] = c; i += 1
    for r in ranks:
        for b in r["batches"]:
            assert b["y_anchor"] == b["y_partner"]                           # labels the loss saw
            assert [id_cls[a] for a in b["anchors"]] == [id_cls[p] for p in b["partners"]]  # the images themselves
            assert b["pix_cls_anchor"] == b["pix_cls_partner"]
            assert all(p != a for a, p in zip(b["anchors"], b["partners"]))   # a different image of the class


def test_only_rank0_writes_and_metrics_match_single_process(ddp_run):
    from cskd_fastai.evaluate import evaluate_run
    d = ddp_run["run_dir"]
    out = ddp_run["stdout"]
    assert out.count("training ddp / cskd-lam1-T4 ") == 1 and out.count("epoch 1/1") == 2   # rank 0 logs alone (2 runs)
    assert "2 processes x 3 anchors per step" in out
    for f in ("recipe.yaml", "env.json", "history.csv", "metrics.json", "logits.pt", "export.pkl", "checkpoint.pth", "DONE"):
        assert (d / f).exists(), f
    assert len((d / "history.csv").read_text().splitlines()) == 2             # one header, one epoch: one writer
    m = json.loads((d / "metrics.json").read_text())
    assert m["facts"]["world_size"] == 2 and m["facts"]["n_valid"] == 5 and m["facts"]["n_test"] == 9
    got = evaluate_run(d)["test"]                                              # single process, from the export
    for k, v in m["test"].items(): assert got[k] == pytest.approx(v, abs=1e-5), k
    # the epoch's valid metrics, gathered over both ranks by DistributedDL.to_detach (5 items: one padded),
    # equal rank 0's single-process evaluation of the same final model
    import pandas as pd
    h = pd.read_csv(d / "history.csv").iloc[-1]
    for k in ("top1_err", "ece", "nll", "brier"): assert h[k] == pytest.approx(m["valid"][k], abs=1e-5), k
    # fastai's own valid_loss (Recorder's AvgLoss) averages each rank's batch-mean loss, padding duplicate included:
    # close to, not exactly, the nll column (which is gathered and un-padded)
    assert h["valid_loss"] == pytest.approx(m["valid"]["nll"], abs=0.05)
    for col in ("train_ce", "train_kd", "anchor_conf"): assert np.isfinite(h[col])


def test_per_sample_stores_are_shared_by_all_ranks(ddp_run):
    "cskd_stored under DDP: each rank trained half the samples, yet both end with the same, complete store."
    a, b = (r["store"] for r in ddp_run["ranks"])
    assert sum(a["seen"]) == sum(b["seen"]) == 14 and a["seen"] == b["seen"]    # 7 per rank; alone, each knew 7
    assert np.allclose(a["store"], b["store"])
    assert (ddp_run["base"] / "runs" / "ddp" / "cskd-lam1-T4-stored-gated" / "seed0" / "DONE").exists()


def test_kd_statistics_cover_every_rank(ddp_run):
    """Every KD callback's logged training statistics are means over all ranks' anchors (14 = the train split), the
    same on every rank: StoredCSKD's were rank 0's alone before they reduced themselves (KDCallback)."""
    a, b = (r["stats"] for r in ddp_run["ranks"])
    assert set(a) == set(b) == {"cskd", "stored_cskd"}
    for name in a:
        assert a[name]["n_anchors"] == b[name]["n_anchors"] == 14, name
        for k, v in a[name].items(): assert b[name][k] == pytest.approx(v, rel=1e-6), (name, k)
    import pandas as pd
    h = pd.read_csv(ddp_run["base"] / "runs" / "ddp" / "cskd-lam1-T4-stored-gated" / "seed0" / "history.csv").iloc[-1]
    for k in ("train_ce", "train_kd", "partner_seen"): assert h[k] == pytest.approx(a["stored_cskd"][k], rel=1e-5), k


def test_get_preds_gathers_all_ranks(ddp_run):
    import torch
    from cskd_fastai.rundir import load_logits
    gathered = torch.load(ddp_run["base"] / "rec" / "gathered_preds.pt")
    single, labels, _ = load_logits(ddp_run["run_dir"], "test")                # rank 0 alone, dataset order
    assert gathered.shape == single.shape == (9, 3)                            # 2 x 5 slots, padding removed
    assert torch.allclose(gathered.float(), single, atol=1e-5)


def test_distributed_flag_builds_a_torchrun_command_and_checks_input(tmp_path):
    from cskd_fastai.cli import app
    cmd = launch_command(["train", "r.yaml", "--out", "o"], 4, port=29999)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[-5:] == ["cskd_fastai", "train", "r.yaml", "--out", "o"] and "29999" in cmd
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(ROOT / "recipes" / "quickstart.yaml"), "--nproc", "2"])
    assert res.exit_code == 2 and "--nproc needs --distributed" in res.output


GATHER = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from cskd_fastai.callbacks.sample_store import gather_rows
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    n = 2 if rank == 0 else 3                           # unequal batches: the padding path
    idx = torch.arange(n) + 10 * rank
    vals = torch.full((n, 4), float(rank)) + torch.arange(n)[:, None]
    gi, gv = gather_rows(idx, vals)
    torch.save(dict(idx=gi, vals=gv), f"{out}.{rank}")
    dist.destroy_process_group()
''')


def test_gather_rows_concatenates_unequal_batches_in_rank_order(tmp_path):
    (tmp_path / "g.py").write_text(GATHER)
    init = f"file://{tmp_path / 'pg'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ps = [subprocess.Popen([sys.executable, str(tmp_path / "g.py"), str(r), init, str(tmp_path / "o")], env=env)
          for r in range(2)]
    assert [p.wait(timeout=120) for p in ps] == [0, 0]
    import torch
    for r in range(2):
        got = torch.load(tmp_path / f"o.{r}")
        assert got["idx"].tolist() == [0, 1, 10, 11, 12]
        assert got["vals"][:, 0].tolist() == [0, 1, 1, 2, 3] and got["vals"].shape == (5, 4)
