"""`cskd-fastai download` against replica archives served from 127.0.0.1 (no network): checksums, an interrupted
transfer resumed with a Range request, and archive members that try to leave the target folder."""
from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cskd_fastai import download as D
from cskd_fastai.datasets import DatasetLayoutError, load_dataset
from cskd_fastai.testing.replicas import make_cub, replica_classes

from test_cli import _one_error_line, cli


class Files(BaseHTTPRequestHandler):
    "Serves `files` (name -> bytes) with Range support; `cut[name] = n` sends only n bytes, then hangs up."
    files: dict = {}
    cut: dict = {}
    ranges: list = []

    def do_GET(self):
        name = self.path.lstrip("/").split("?")[0]
        data = self.files.get(name)
        if data is None: self.send_error(404); return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            self.ranges.append((name, rng))
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else: self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        n = self.cut.pop(name, None)
        self.wfile.write(body if n is None else body[:n])
        if n is not None: self.close_connection = True

    def log_message(self, *a): pass


@pytest.fixture
def server():
    Files.files, Files.cut, Files.ranges = {}, {}, []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown(); srv.server_close()


def _tgz(root: Path, arcroot: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf: tf.add(root / arcroot, arcname=arcroot)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cub_tgz(tmp_path_factory) -> bytes:
    "A replica of CUB_200_2011.tgz: the CUB_200_2011/ folder at the archive's top, as the official one."
    return _tgz(make_cub(tmp_path_factory.mktemp("cubsrc"), n_per_class=2, n_classes=3, n_test_per_class=1),
                "CUB_200_2011")


def _serve_cub(monkeypatch, url, data, digest=None):
    Files.files["CUB_200_2011.tgz"] = data
    a = D.Archive(f"{url}/CUB_200_2011.tgz", "CUB_200_2011.tgz", digest or hashlib.md5(data).hexdigest())
    monkeypatch.setitem(D.SOURCES, "cub", lambda: [a])


def test_download_verifies_extracts_and_checks_the_layout(server, cub_tgz, monkeypatch, tmp_path):
    _serve_cub(monkeypatch, server, cub_tgz)
    code, out = cli("download", "cub", "--to", tmp_path / "data", "--no-progress")
    assert code == 0, out
    assert "md5 verified" in out and "dataset cub: ok (3 classes, 6 train, 3 test)" in out
    assert load_dataset("cub", tmp_path / "data").classes == replica_classes("cub", 3)
    assert not (tmp_path / "data" / ".downloads").exists()            # archives removed once extracted
    code, out = cli("check", _recipe(tmp_path), "--data-root", tmp_path / "data")
    assert code == 0, out


def _recipe(tmp_path) -> Path:
    f = tmp_path / "cub.yaml"
    f.write_text("name: c\ndataset: {name: cub, image_size: 16}\nmodel: {arch: small_cnn}\n"
                 "train: {epochs: 1, bs: 4, lr: 0.1}\nmethods: [{name: ce}]\n")
    return f


def test_a_wrong_checksum_is_refused_and_nothing_extracted(server, cub_tgz, monkeypatch, tmp_path):
    _serve_cub(monkeypatch, server, cub_tgz, digest="0" * 32)
    _one_error_line(*cli("download", "cub", "--to", tmp_path / "d", "--no-progress"), "does not match the published",
                    "rerun")
    assert not (tmp_path / "d" / "CUB_200_2011").exists()
    assert not list((tmp_path / "d" / ".downloads").glob("*"))        # the bad file was deleted


def test_an_interrupted_download_resumes_with_a_range_request(server, cub_tgz, monkeypatch, tmp_path):
    _serve_cub(monkeypatch, server, cub_tgz)
    Files.cut["CUB_200_2011.tgz"] = len(cub_tgz) // 3                 # the connection drops a third of the way
    _one_error_line(*cli("download", "cub", "--to", tmp_path / "d", "--no-progress"), "interrupted", "resume")
    part = tmp_path / "d" / ".downloads" / "CUB_200_2011.tgz.part"
    assert part.stat().st_size == len(cub_tgz) // 3
    code, out = cli("download", "cub", "--to", tmp_path / "d", "--no-progress")
    assert code == 0 and "resuming" in out, out
    assert Files.ranges == [("CUB_200_2011.tgz", f"bytes={len(cub_tgz) // 3}-")]
    assert len(load_dataset("cub", tmp_path / "d").train.items) == 6


@pytest.mark.parametrize("evil", ["../escaped.txt", "/tmp/abs-escaped.txt", "CUB_200_2011/../../escaped.txt"])
def test_members_that_leave_the_folder_are_refused(server, monkeypatch, tmp_path, evil):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ok = tarfile.TarInfo("CUB_200_2011/ok.txt"); ok.size = 2; tf.addfile(ok, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo(evil); bad.size = 4; tf.addfile(bad, io.BytesIO(b"evil"))
    _serve_cub(monkeypatch, server, buf.getvalue())
    target = tmp_path / "deep" / "d"
    _one_error_line(*cli("download", "cub", "--to", target, "--no-progress"), "outside", "refusing")
    assert not (target / "CUB_200_2011" / "ok.txt").exists()          # refused before anything was written
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        link = tarfile.TarInfo("CUB_200_2011/passwd"); link.type = tarfile.SYMTYPE; link.linkname = "/etc/passwd"
        tf.addfile(link)
    arc = tmp_path / "a.tar"; arc.write_bytes(buf.getvalue())
    with pytest.raises(D.DownloadError, match="escaping link"): D.safe_extract(arc, tmp_path / "t")
    assert not (tmp_path / "t" / "CUB_200_2011" / "passwd").exists()


def test_missing_data_names_the_download_command(tmp_path):
    with pytest.raises(DatasetLayoutError, match="cskd-fastai download cub --to DIR"):
        load_dataset("cub", tmp_path / "nowhere")
    _one_error_line(*cli("download", "imagenet", "--to", tmp_path), "no download for 'imagenet'", "licence")


def test_cifar_sources_are_torchvisions():
    import torchvision.datasets as tvd
    (a,) = D.SOURCES["cifar100"]()
    assert (a.url, a.filename, a.digest) == (tvd.CIFAR100.url, tvd.CIFAR100.filename, tvd.CIFAR100.tgz_md5)
