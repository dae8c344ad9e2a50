"Paired-class batches: same-class partners, anchors once per epoch, plain derived loaders."
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from fastai.data.core import Datasets, TfmdDL
from fastai.data.transforms import Categorize

from cskd_fastai.loaders import ClassIndex, PairedDL, dataset_labels, paired_dls

LABELS = ["a"] * 5 + ["b"] * 3 + ["c"] * 1 + ["d"] * 6   # 'c' is a one-sample class


def _x(i): return torch.tensor([float(i)])
def _y(i): return LABELS[i]


def index_dl(bs=4, drop_last=False, num_workers=0, shuffle=True):
    "A paired loader over item *indices*, so batches reveal exactly which items were drawn."
    ds = Datasets(list(range(len(LABELS))), tfms=[[_x], [_y, Categorize()]])
    return PairedDL(ds, bs=bs, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers)


def pairs(dl):
    "(anchor indices, partner indices) for every batch of one epoch."
    out = []
    for xb, yb in dl:
        b = len(yb) // 2
        idx = xb[:, 0].long()
        assert torch.equal(yb[:b], yb[b:]), "a partner's label differs from its anchor's"
        out.append((idx[:b].tolist(), idx[b:].tolist()))
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_partners_share_class_and_anchors_are_a_permutation(num_workers):
    dl = index_dl(num_workers=num_workers)
    for _ in range(3):
        ps = pairs(dl)
        anchors = [a for ab, _ in ps for a in ab]
        assert sorted(anchors) == list(range(len(LABELS)))           # every item once, partial batch kept
        for ab, pb in ps:
            for a, p in zip(ab, pb):
                assert LABELS[a] == LABELS[p]
                assert (p != a) or LABELS.count(LABELS[a]) == 1         # itself only in a one-sample class


def test_anchor_order_is_shuffled_between_epochs():
    torch.manual_seed(0)
    dl = index_dl()
    orders = {tuple(a for ab, _ in pairs(dl) for a in ab) for _ in range(4)}
    assert len(orders) > 1


def test_trailing_single_anchor_joins_previous_batch():
    dl = index_dl(bs=7)                      # 15 items = 7 + 7 + 1 -> 7 + 8
    sizes = [len(ab) for ab, _ in pairs(dl)]
    assert sizes == [7, 8] and len(dl) == 2
    dl = index_dl(bs=4, drop_last=True)      # 15 items -> 3 full batches
    assert [len(ab) for ab, _ in pairs(dl)] == [4, 4, 4]


def test_partner_is_uniform_over_other_members():
    ci = ClassIndex(np.array([0, 0, 0, 0, 1, 1]))
    draws = Counter(ci.partners(np.zeros(6000, dtype=np.int64)).tolist())
    assert set(draws) == {1, 2, 3}                       # never the anchor itself, never another class
    assert all(abs(c / 6000 - 1 / 3) < 0.03 for c in draws.values())
    assert ci.partners([4, 5]).tolist() == [5, 4]          # two-member class: always the other one


def test_partners_like_is_partners_on_a_tensor():
    "The device-side draw (StoredCSKD's) returns exactly the numpy draw, for given and for seeded random numbers."
    labels = np.array([3, 0, 3, 1, 0, 3, 2, 0, 3, 3])          # class 1 and 2 are singletons; ids not sorted
    ci = ClassIndex(labels)
    anchors = np.random.default_rng(0).integers(0, len(labels), 500)
    u = np.random.default_rng(1).random(500)
    got = ci.partners_like(torch.as_tensor(anchors), u=torch.as_tensor(u))
    assert got.dtype == torch.int64 and got.tolist() == ci.partners(anchors, u=u).tolist()
    torch.manual_seed(7); a = ci.partners(anchors)
    torch.manual_seed(7); b = ci.partners_like(torch.as_tensor(anchors))
    assert b.tolist() == a.tolist()
    assert (labels[b.numpy()] == labels[anchors]).all()
    alone = np.isin(labels[anchors], [1, 2])
    assert (b.numpy()[alone] == anchors[alone]).all() and (b.numpy()[~alone] != anchors[~alone]).all()


def test_labels_read_without_decoding_inputs(image_folder):
    from conftest import make_dls
    dls = make_dls(image_folder)
    calls = []
    x_pipe = dls.train_ds.tls[0]
    orig = x_pipe.tfms
    x_pipe.tfms = lambda o: calls.append(o) or orig(o)   # would record any image decode
    labels = dataset_labels(dls.train_ds)
    x_pipe.tfms = orig
    assert calls == [] and len(labels) == len(dls.train_ds)
    assert Counter(labels.tolist()) == Counter({0: 9, 1: 7, 2: 5})


def test_derived_loaders_are_plain(image_folder):
    from conftest import make_dls
    dls = make_dls(image_folder)
    assert isinstance(dls.train, PairedDL)
    assert type(dls.valid) is TfmdDL
    assert type(dls.test_dl(dls.valid_ds.items)) is TfmdDL
    assert type(dls.new_empty().train) is TfmdDL
    assert type(dls.train.new(shuffle=False, drop_last=False)) is TfmdDL   # what get_preds(ds_idx=0) uses
    xb, yb = dls.train.one_batch()
    assert len(yb) == 2 * dls.train.bs and len(dls.valid.one_batch()[1]) <= dls.valid.bs


def test_paired_dls_converts_plain_loaders(image_folder):
    from conftest import make_dls
    plain = make_dls(image_folder, paired=False)
    dls = paired_dls(plain, drop_last=False)
    assert isinstance(dls.train, PairedDL) and dls.valid is plain.valid
    assert dls.train.bs == plain.train.bs
    assert [type(f) for f in dls.train.after_item.fs] == [type(f) for f in plain.train.after_item.fs]
    n = sum(len(yb) // 2 for _, yb in dls.train)
    assert n == len(plain.train_ds)


def test_distributed_ranks_pair_after_their_slice():
    "Under fastai's DistributedDL each rank pairs its own slice: disjoint anchors, same-class partners."
    from fastai.distributed import DistributedDL

    class LocalDDL(DistributedDL):               # no process group: the broadcast is the identity
        def _broadcast(self, t, rank): return list(t)

    seen = []
    for rank in (0, 1):
        torch.manual_seed(0)                      # same shuffle on both ranks, as after the real broadcast
        import random; random.seed(0)
        dl = index_dl(bs=2)
        ddl = LocalDDL(dl, rank=rank, world_size=2)
        ps = pairs(ddl)
        seen.append([a for ab, _ in ps for a in ab])
    pad = (-len(LABELS)) % 2                      # DistributedDL pads the shuffled indices to a multiple of 2
    assert len(set(seen[0]) & set(seen[1])) <= pad and len(seen[0]) + len(seen[1]) == len(LABELS) + pad
    assert set(seen[0]) | set(seen[1]) == set(range(len(LABELS)))


def test_show_batch_pairs_side_by_side(image_folder):
    import matplotlib; matplotlib.use("Agg")
    from conftest import make_dls
    dls = make_dls(image_folder)
    import matplotlib.pyplot as plt
    plt.close("all")
    dls.train.show_batch(max_n=3, show=True)
    axes = plt.gcf().axes
    assert len(axes) == 6
    titles = [ax.get_title() for ax in axes]
    assert titles[0::2] == titles[1::2]                  # anchor (left) and partner (right) share the class
