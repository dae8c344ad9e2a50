"""`bench/gpu_suite.py --dry-run`: every section of the GPU suite runs for a couple of steps on CPU and writes the
same JSON keys, so the suite cannot rot while no GPU is lent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cskd_fastai.testing.replicas import make_cub

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_answers_every_section(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_suite import KEYS
    data = make_cub(tmp_path / "cub", n_per_class=4, n_classes=4, n_test_per_class=2, size=40)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--dry-run", "--out", str(tmp_path / "o"),
                        "--data", str(data), "--budget-s", "240"], capture_output=True, text=True, timeout=420,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = json.loads((tmp_path / "o" / "suite.json").read_text())
    assert set(res) == set(KEYS) and res["dry_run"] is True
    assert all(v.startswith("ok") for v in res["sections"].values()), res["sections"]
    assert res["env"]["bf16_matmul_tflops"] > 0 and res["env"]["torch"]
    timed = [t for t in res["throughput"] if "ips" in t]
    assert {(t["config"], t["source"]) for t in timed} >= {("cifar", "synthetic"), ("r18b32", "real")}
    assert any(t["variant"] == "bf16+cl+cache+gpu_aug" for t in timed)       # the cache path ran too
    for t in timed: assert t["ips"]["cskd"] > 0 and t["kd_over_ce"] > 0 and t["stored_over_ce"] > 0 and t["gflops_fwd"] > 0
    h = res["headline"]
    assert h["cskd_over_ce"] > 0 and h["stored_over_ce"] > 0 and h["cskd_over_ref"] > 0 and 0 < h["bf16_peak_fraction"]
    kd = res["smoke"]["kd_bf16"]
    assert kd["ok"] and kd["partner_dtype"] == "torch.bfloat16" and kd["steps"] > 0 and kd["max_abs_err_vs_fp64"] < 3e-5
    assert res["smoke"]["nccl"]["ok"] and res["smoke"]["nccl"]["world_size"] == 1
    for m in ("ce", "cskd-lam3-T4"):
        p = res["paper_cub"][m]
        assert p["epochs_done"] >= 1 and p["projected_200_epochs_h"] is not None, p
    md = (tmp_path / "o" / "suite.md").read_text()
    assert "**Headline**" in md and md.strip() in r.stdout


def test_evidence_parks_out_of_the_device_carry_and_back(tmp_path, monkeypatch):
    "docs/evidence outgrew the 64 MiB a device call carries: parked it travels not, commits are refused, unpark restores."
    import importlib, subprocess as sp
    sys.path.insert(0, str(ROOT / "bench"))
    gp = importlib.import_module("gpu_prepare")
    repo = tmp_path / "r"
    (repo / "docs" / "evidence" / "run").mkdir(parents=True)
    (repo / "docs" / "evidence" / "run" / "logits.pt").write_bytes(b"x" * 5000)
    (repo / "code.py").write_text("print(1)\n")
    git = lambda *a, check=True: sp.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *a], cwd=repo,
                                        capture_output=True, text=True, check=check)
    git("init", "-q"); git("add", "."); git("commit", "-qm", "init")
    monkeypatch.setattr(gp, "ROOT", repo)
    full = gp.tracked_bytes()
    (repo / "docs" / "evidence" / "new.txt").write_text("uncommitted")
    with pytest.raises(SystemExit, match="uncommitted changes"): gp.park_evidence()
    (repo / "docs" / "evidence" / "new.txt").unlink()
    gp.park_evidence()
    assert gp.tracked_bytes() == full - 5000 and git("ls-files").stdout.split() == ["code.py"]
    st = git("status", "--porcelain", "--untracked-files=all").stdout.splitlines()
    assert st == ["D  docs/evidence/run/logits.pt"]          # out of the index (staged), and ignored: never "??"
    assert (repo / "docs" / "evidence" / "run" / "logits.pt").stat().st_size == 5000       # and still on disk
    assert git("commit", "-qm", "oops", check=False).returncode != 0                      # never committed parked
    gp.unpark_evidence()
    assert gp.tracked_bytes() == full and git("status", "--porcelain").stdout == ""
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert "docs/evidence" not in (repo / ".git" / "info" / "exclude").read_text()
