"""The archived logits (`rundir.compact`, logits.npz): float16 deltas that keep every top-k error exactly, NLL to
float precision, and what `compare` reads from an archived run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cskd_fastai.metrics.functional import classification_metrics
from cskd_fastai.rundir import RunDirError, load_logits, save_logits
from cskd_fastai.rundir.archive import compact_archived
from cskd_fastai.rundir.compact import COMPACT_LOGITS, decode_logits, encode_logits, load_compact, save_compact


def _near_ties(n=400, c=50, seed=0):
    """Logits where classes sit within float16's rounding of the true class's logit: naive float16 would reorder
    them and change top-k errors."""
    g = np.random.default_rng(seed)
    z = g.normal(0, 4, (n, c)).astype(np.float32)
    y = g.integers(0, c, n)
    for i in range(n):                        # 5 classes a hair above or below the true class
        others = g.choice([k for k in range(c) if k != y[i]], 5, replace=False)
        z[i, others] = z[i, y[i]] + g.choice([-1, 1], 5) * g.uniform(1e-6, 1e-3, 5).astype(np.float32)
    return z, y


def test_near_ties_keep_every_top_k_error_exactly_and_naive_float16_would_not():
    z, y = _near_ties()
    back, yb = decode_logits(encode_logits(z, y, "test"), "test")
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    naive = torch.from_numpy(z.astype(np.float16).astype(np.float32))
    for k in (1, 5):
        rank = lambda a: (a > a.gather(1, yt[:, None])).sum(1)        # classes strictly above the true one
        assert torch.equal(rank(torch.from_numpy(back)), rank(zt))
    assert not torch.equal((naive > naive.gather(1, yt[:, None])).sum(1), (zt > zt.gather(1, yt[:, None])).sum(1))
    a, b = classification_metrics(zt, yt), classification_metrics(torch.from_numpy(back), yt)
    assert a["top1_err"] == b["top1_err"] and a["top5_err"] == b["top5_err"]
    assert abs(a["nll"] - b["nll"]) < 1e-5 and abs(a["brier"] - b["brier"]) < 1e-5
    assert np.array_equal(yb, y) and np.array_equal(back.max(1), z.max(1))       # row maxima exact
    assert np.allclose(back[np.arange(len(y)), y], z[np.arange(len(y)), y], rtol=0, atol=1e-5)  # true class: float32


def test_hand_example_rounds_to_nearest_float16_except_across_the_true_class():
    # row max 2.0; true class 1 at delta -1.0; class 2 at delta -1.0001 (below it) rounds to -1.0 in float16,
    # a tie with the true class, so it is moved away from it instead, to the next float16 below
    z = np.array([[2.0, 1.0, 0.9999, -1.3]], np.float32)
    a = encode_logits(z, np.array([1]), "s")
    assert a["s_rowmax"].tolist() == [2.0] and a["s_label"].tolist() == [-1.0]
    d = a["s_delta"][0]
    assert d.dtype == np.float16 and d[0] == 0 and d[3] == np.float16(-3.3)       # nearest
    assert d[2] == np.nextafter(np.float16(-1.0), np.float16(-2)) < -1.0          # away from the true class


def test_npz_loads_without_pickle_and_reads_like_logits_pt(tmp_path):
    z, y = _near_ties(60, 7, seed=1)
    save_compact(tmp_path, {"valid": (torch.from_numpy(z[:20]), torch.from_numpy(y[:20])),
                            "test": (torch.from_numpy(z), torch.from_numpy(y))}, [f"c{i}" for i in range(7)])
    with np.load(tmp_path / COMPACT_LOGITS, allow_pickle=False) as d:
        assert all(d[k].dtype != object for k in d.files)
    zl, yl, classes = load_logits(tmp_path, "test")
    assert classes == [f"c{i}" for i in range(7)] and zl.dtype == torch.float32 and yl.dtype == torch.int64
    assert torch.allclose(zl, torch.from_numpy(z), atol=1e-2) and torch.equal(yl, torch.from_numpy(y))
    assert set(load_compact(tmp_path / COMPACT_LOGITS)) == {"valid", "test", "classes"}
    (tmp_path / COMPACT_LOGITS).write_bytes(b"not a zip")
    with pytest.raises(RunDirError, match="cannot read .*logits.npz"): load_logits(tmp_path, "test")


def test_compact_archived_converts_in_place_once(tmp_path):
    z, y = _near_ties(80, 9, seed=2)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    save_logits(tmp_path, {"valid": (zt[:30], yt[:30]), "test": (zt, yt)}, list("abcdefghi"))
    (tmp_path / "curves.png").write_bytes(b"png")
    assert compact_archived(tmp_path) is True
    assert not (tmp_path / "logits.pt").exists() and not (tmp_path / "curves.png").exists()
    assert torch.equal(load_logits(tmp_path, "test")[0].argmax(1), zt.argmax(1))
    assert compact_archived(tmp_path) is False


def test_trust_logits_round_trip_keeps_ood_scores_and_shift_errors(tmp_path):
    "OOD rows (no label) keep their max softmax to float16's step; a shift condition's errors stay exact; no OOD set is fine."
    from cskd_fastai.metrics.ood import ood_score
    from cskd_fastai.rundir.compact import load_trust_logits, save_trust_logits
    g = np.random.default_rng(0)
    far, near = (g.normal(0, 3, (n, 7)).astype(np.float32) for n in (11, 5))
    y = g.integers(0, 7, 9)
    shift = {"clean": g.normal(0, 3, (9, 7)).astype(np.float32), "fog/3": torch.randn(9, 7) * 3}
    save_trust_logits(tmp_path / "t.npz", {"/some/folder": far, "holdout": near}, shift, torch.as_tensor(y))
    back = load_trust_logits(tmp_path / "t.npz")
    assert list(back["ood"]) == ["/some/folder", "holdout"] and list(back["shift"]) == ["clean", "fog/3"]
    for src, z in (("/some/folder", far), ("holdout", near)):
        assert np.abs(ood_score(back["ood"][src], "msp") - ood_score(z, "msp")).max() < 2e-3
        assert np.array_equal(back["ood"][src].max(1), z.max(1))           # the row maxima (max-logit score) exact
    for cond, z in shift.items():
        zb, yb = back["shift"][cond]
        z = np.asarray(z)
        assert np.array_equal(yb, y) and np.array_equal(zb.argmax(1) == yb, z.argmax(1) == y)
    save_trust_logits(tmp_path / "e.npz", {}, {}, np.zeros(0, np.int64))
    assert load_trust_logits(tmp_path / "e.npz") == {"ood": {}, "shift": {}}
