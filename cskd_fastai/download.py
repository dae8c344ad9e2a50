"""`cskd-fastai download DATASET --to DIR`: the paper's datasets from their official archives, into the layout the
loaders read.

Each archive is fetched to `DIR/.downloads/<file>.part` (resumed with an HTTP Range request after an interruption),
checked against its published checksum, renamed, and extracted member by member: an absolute path, a `..`, or a
link that would land outside `DIR` stops the extraction before anything of it is written. Then the dataset is
loaded as `train`/`check` would load it and its counts are printed.

Checksums: CIFAR-10/100 are torchvision's own (`torchvision.datasets.CIFAR10.tgz_md5`, same URLs); CUB-200-2011,
Tiny-ImageNet and Stanford Dogs use the MD5s published with their torchvision-style loaders; MIT Indoor-67's
image archive the SHA-1 published with vipy's loader. MIT's two split lists (small text files) have no published
checksum: they are verified by the layout check that follows.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

__all__ = ["Archive", "SOURCES", "DownloadError", "download_dataset", "fetch", "safe_extract"]


class DownloadError(ValueError):
    "A download or extraction that cannot go on (one line: what and what to do)."


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    digest: Optional[str]          # hex digest of the whole file, None where none is published
    algo: str = "md5"
    into: str = ""                 # extract into DIR/into ("" = DIR); None-like "-" = keep the file as is in DIR
    size: Optional[int] = None


def _cifar(cls_name: str) -> list[Archive]:
    import torchvision.datasets as tvd
    c = getattr(tvd, cls_name)   # torchvision's own URL and MD5
    return [Archive(c.url, c.filename, c.tgz_md5)]


SOURCES: dict[str, Callable[[], list[Archive]]] = {
    "cifar10": lambda: _cifar("CIFAR10"),
    "cifar100": lambda: _cifar("CIFAR100"),
    "cub": lambda: [Archive("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                            "CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78")],
    "tinyimagenet": lambda: [Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
                                     "90528d7ca1a48142e341f4ef8d21d0de")],
    "dogs": lambda: [Archive("http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar", "images.tar",
                             "1bb1f2a596ae7057f99d7d75860002ef"),
                     Archive("http://vision.stanford.edu/aditya86/ImageNetDogs/lists.tar", "lists.tar",
                             "edbb9f16854ec66506b5f09b583e0656", into="lists")],
    "mit67": lambda: [Archive("http://groups.csail.mit.edu/vision/LabelMe/NewImages/indoorCVPR_09.tar",
                              "indoorCVPR_09.tar", "0b252516e746ba428b96af408d2e8162d9b08ac5", algo="sha1"),
                      Archive("http://web.mit.edu/torralba/www/TrainImages.txt", "TrainImages.txt", None, into="-"),
                      Archive("http://web.mit.edu/torralba/www/TestImages.txt", "TestImages.txt", None, into="-")],
}


def _hash(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""): h.update(chunk)
    return h.hexdigest()


def _opener():
    return urllib.request.build_opener()


def fetch(a: Archive, folder: Path, progress: bool = False, log: Callable[[str], None] = print,
          timeout: float = 60.0) -> Path:
    """Download `a` into `folder` (resuming a `.part` file left by an interrupted run) and verify its checksum.
    Returns the complete file; raises `DownloadError` on a checksum mismatch or an interrupted transfer."""
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / a.filename, folder / (a.filename + ".part")
    if final.exists() and (a.digest is None or _hash(final, a.algo) == a.digest):
        log(f"{a.filename}: already downloaded"); return final
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(a.url, headers={"Range": f"bytes={have}-"} if have else {})
    try: resp = _opener().open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:   # the .part is already whole: check it below
            resp = None
        else: raise DownloadError(f"cannot download {a.url}: HTTP {e.code} {e.reason}; check the address or "
                                  f"your network, then rerun") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot reach {a.url} ({getattr(e, 'reason', e)}); check your network, then rerun "
                            f"(a partial download is resumed)") from None
    if resp is not None:
        with resp:
            if have and resp.status != 206: have = 0   # the server ignored the Range: start again
            total = resp.headers.get("Content-Length")
            total = have + int(total) if total is not None else None
            if have: log(f"{a.filename}: resuming at {have / 2**20:.1f} MiB")
            got, t_last = have, 0.0
            with open(part, "ab" if have else "wb") as f:
                try:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk: break
                        f.write(chunk); got += len(chunk)
                        if progress and time.monotonic() - t_last > 0.5:
                            t_last = time.monotonic()
                            pct = f" {100 * got / total:5.1f}%" if total else ""
                            print(f"\r{a.filename}: {got / 2**20:8.1f} MiB{pct}", end="", file=sys.stderr, flush=True)
                except (OSError, urllib.error.URLError) as e:
                    raise DownloadError(f"download of {a.filename} interrupted at {got / 2**20:.1f} MiB "
                                        f"({type(e).__name__}); rerun the same command to resume") from None
            if progress: print(file=sys.stderr)
            if total is not None and got < total:
                raise DownloadError(f"download of {a.filename} interrupted at {got} of {total} bytes; rerun the "
                                    f"same command to resume")
    if a.digest is not None:
        h = _hash(part, a.algo)
        if h != a.digest:
            part.unlink()
            raise DownloadError(f"{a.filename}: {a.algo} {h} does not match the published {a.digest}; the file was "
                                f"deleted, rerun to download it again (if it fails again, the source has changed)")
    os.replace(part, final)
    log(f"{a.filename}: downloaded" + (f", {a.algo} verified" if a.digest else " (no published checksum)"))
    return final


def _member_inside(target: Path, name: str) -> bool:
    p = (target / name).resolve()
    return p == target or target in p.parents


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a .tar(.gz) or .zip into `target`, refusing (before writing anything) a member whose path is absolute,
    climbs out with `..`, or is a link/device; one `DownloadError` line names it."""
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if name.startswith("/") or not _member_inside(target, name):
                    raise DownloadError(f"{archive.name}: member {name!r} would be written outside {target}; refusing "
                                        f"to extract this archive")
            z.extractall(target)
        return
    try: tf = tarfile.open(archive)
    except tarfile.TarError as e: raise DownloadError(f"{archive} is not a tar or zip archive ({e})") from None
    with tf:
        members = tf.getmembers()
        for m in members:
            bad = (m.name.startswith("/") or not _member_inside(target, m.name)
                   or (m.issym() or m.islnk()) and not _member_inside(target, str(Path(m.name).parent / m.linkname))
                   or m.isdev() or m.isfifo())
            if bad:
                raise DownloadError(f"{archive.name}: member {m.name!r} would be written outside {target} (or is a "
                                    f"device or an escaping link); refusing to extract this archive")
        tf.extractall(target, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def download_dataset(name: str, to, progress: Optional[bool] = None, keep_archives: bool = False,
                     log: Callable[[str], None] = print):
    "Download, verify and extract `name` into `to`; returns the loaded `ImageDataset` (the layout check)."
    from .datasets import load_dataset
    from .datasets.core import canonical_name
    key = canonical_name(name)
    if key not in SOURCES:
        raise DownloadError(f"no download for {name!r}; available: {', '.join(sorted(SOURCES))} (ImageNet needs a "
                            f"licence: get it from image-net.org)")
    to = Path(to).expanduser()
    if progress is None: progress = sys.stderr.isatty()
    dl = to / ".downloads"
    for a in SOURCES[key]():
        f = fetch(a, dl, progress=progress, log=log)
        if a.into == "-": shutil.copy2(f, to / a.filename)
        else:
            log(f"{a.filename}: extracting into {to / a.into if a.into else to}")
            safe_extract(f, to / a.into if a.into else to)
        if not keep_archives and a.into != "-": f.unlink()
    if not keep_archives and dl.exists() and not any(p for p in dl.iterdir() if p.suffix != ".part"):
        shutil.rmtree(dl, ignore_errors=True)
    return load_dataset(key, to)
