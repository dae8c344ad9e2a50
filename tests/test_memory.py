"`ReleaseMemory`: glibc's freed heap pages go back to the OS, every N batches and each epoch, in every CLI run."
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastai.optimizer import SGD

from cskd_fastai import plain_learner
from cskd_fastai.callbacks import memory as M
from cskd_fastai.callbacks.memory import ReleaseMemory
from test_callback import TinyNet
from conftest import make_dls

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or M._libc_trim() is None,
                           reason="malloc_trim is glibc's (Linux)")


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"): return int(line.split()[1]) / 1024
    pytest.skip("no RssAnon in /proc/self/status")


@glibc
def test_malloc_trim_returns_free_heap_pages_that_free_keeps():
    # 64 KB blocks (below the mmap threshold: on the heap) interleaved with small live ones, as a training step's
    # buffers sit between long-lived objects: freeing the blocks leaves the pages resident; the trim returns them
    blocks, pins = [], []
    for _ in range(1500):
        blocks.append(bytearray(64 * 1024)); pins.append(bytearray(2000))
    del blocks
    held = rss_anon_mb()
    assert M.malloc_trim() is True
    assert held - rss_anon_mb() > 60, "the ~94 MB of freed blocks stayed resident"


@pytest.mark.parametrize("every", [1, 2, 3])
def test_trims_every_n_training_batches_and_after_each_epoch(image_folder, every):
    dls = make_dls(image_folder, paired=False)
    calls = []
    learn = plain_learner(dls, TinyNet(), opt_func=SGD, lr=0.05)
    learn.fit(2, cbs=ReleaseMemory(every, trim=lambda: calls.append(learn.training)))
    n = len(dls.train)
    assert n >= 3
    # validation batches never trigger a trim; each epoch ends with one
    assert len(calls) == 2 * (n // every + 1)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "50"])
def test_every_is_validated_eagerly(bad):
    with pytest.raises(ValueError, match="every must be a whole number"): ReleaseMemory(bad)


def test_no_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(M, "_libc_trim", lambda: None)
    assert M.malloc_trim() is False


@pytest.mark.parametrize("every, expect", [(None, True), (0, False)])
def test_cli_runs_trim_unless_switched_off(tmp_path, monkeypatch, every, expect):
    from cskd_fastai.testing.replicas import make_imagefolder
    from test_cli import cli, write_recipe
    calls = []
    monkeypatch.setattr(M, "_libc_trim", lambda: (lambda pad: calls.append(pad) or 1))
    root = make_imagefolder(tmp_path / "d", n_per_class=4, n_classes=2, n_test_per_class=1)
    train = {} if every is None else dict(malloc_trim_every=every)
    recipe = write_recipe(tmp_path / "r.yaml", root, epochs=1, methods=[dict(name="ce")], **train)
    code, out = cli("train", recipe, "--out", tmp_path / "o", "--no-progress")
    assert code == 0, out
    assert bool(calls) is expect and all(c == 0 for c in calls)
