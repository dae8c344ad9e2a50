#!/usr/bin/env python
"""Prepare what `bench/gpu_suite.py` carries to the GPU machine (Python 3.12, torch 2.11, no network, 64 MiB a call):

    python bench/gpu_prepare.py [--cub ../shared/datasets/cub100] [--side 256] [--quality 90] [--limit-mb 56]

* `.whl/`: wheels of the project's pure-Python dependencies the machine lacks (fastai and its fast* family,
  pydantic), for CPython 3.12 manylinux, fetched with `pip download --no-deps`. fastprogress is pinned to 1.0.3:
  1.1 imports python-fasthtml (a web framework and its dependencies) at import time.
* `.gpu_data/cub100/`: the cub100 subset in the CUB layout, every image re-encoded with its shorter side at
  `--side` px (never upscaled) and JPEG quality `--quality`. Everything that travels counts against the 64 MiB of a
  call: the tracked files of the checkout (docs/evidence grows with every archived run), the wheels and the images.
  If they exceed `--limit-mb` (default: 62 MiB), the quality is lowered in steps of 5 (to 60 at the lowest) and then
  the side, and what was used is printed: state it with the numbers (docs/performance.md).

The checkout's tracked files travel too, and `docs/evidence/` (every archived run's logits) outgrew the 64 MiB on
its own (80 MiB on 2026-12-03). `--park-evidence` (the default when the tracked files leave less than 16 MiB for the
images) takes `docs/evidence/` out of what travels for the device calls: `git rm -r --cached` (the files stay on disk,
untouched) plus an entry in .git/info/exclude, and a pre-commit hook that refuses every commit while it is parked, so
the index can never be committed without the evidence. It refuses to park while `docs/evidence/` has uncommitted
changes. After the device calls, `python bench/gpu_prepare.py --unpark` restores the index entries from HEAD and
removes the exclude entry and the hook.

Then, on the device (the `run` tool, carry [".whl", ".gpu_data"]):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \\
      && PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_suite.py --out $OUT --budget-s 480
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ["fastai==2.8.12", "fastcore==2.2.41", "fastprogress==1.0.3", "fastdownload==0.0.8", "fasttransform==0.0.5",
          "plum-dispatch==2.9.0", "beartype==0.23.1", "pydantic==2.14.4", "pydantic-core==2.50.5",
          "annotated-types==0.8.0", "typing-inspection==0.4.5"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any"]


def wheels(dest: Path) -> int:
    dest.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(dest)] + [a for p in PLATFORMS for a in ("--platform", p)] + WHEELS
    subprocess.run(cmd, check=True)
    return sum(f.stat().st_size for f in dest.glob("*.whl"))


def reencode(src: Path, dst: Path, side: int, quality: int) -> int:
    "Copy the CUB metadata and re-encode every image of `src` (a CUB_200_2011 folder) into `dst`; returns bytes."
    if dst.exists(): shutil.rmtree(dst)
    (dst / "images").mkdir(parents=True)
    for f in src.glob("*.txt"): shutil.copy2(f, dst / f.name)
    total = 0
    for f in (src / "images").rglob("*"):
        if not f.is_file(): continue
        out = dst / "images" / f.relative_to(src / "images")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            im = im.convert("RGB")
            s = side / min(im.size)
            if s < 1: im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
            im.save(out, "JPEG", quality=quality)
        total += out.stat().st_size
    return total + sum(f.stat().st_size for f in dst.glob("*.txt"))


EVIDENCE = "docs/evidence"
_MARK = "# cskd-fastai gpu_prepare: docs/evidence parked"
_HOOK = f"#!/bin/sh\n{_MARK}\necho 'docs/evidence is parked for a device call: run python bench/gpu_prepare.py --unpark first' >&2\nexit 1\n"


def _git(*args, check=True) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=check).stdout


def _git_path(name: str) -> Path:
    return ROOT / _git("rev-parse", "--git-path", name).strip()


def park_evidence() -> None:
    "Take docs/evidence out of what travels (files stay on disk); commits are refused until `unpark_evidence`."
    if _git("status", "--porcelain", "--", EVIDENCE).strip():
        raise SystemExit(f"{EVIDENCE} has uncommitted changes; commit them before parking it (they would be lost "
                         f"from the index otherwise)")
    hook = _git_path("hooks/pre-commit")
    if hook.exists() and _MARK not in hook.read_text():
        raise SystemExit(f"{hook} exists and is not ours; park by hand or move it aside first")
    _git("rm", "-r", "-q", "--cached", "--", EVIDENCE)
    excl = _git_path("info/exclude"); excl.parent.mkdir(parents=True, exist_ok=True)
    lines = excl.read_text().splitlines() if excl.exists() else []
    if f"/{EVIDENCE}/" not in lines: excl.write_text("\n".join(lines + [f"/{EVIDENCE}/"]) + "\n")
    hook.parent.mkdir(parents=True, exist_ok=True); hook.write_text(_HOOK); hook.chmod(0o755)
    print(f"parked {EVIDENCE}: not tracked, ignored, commits refused; after the device calls: "
          f"python bench/gpu_prepare.py --unpark")


def unpark_evidence() -> None:
    "Undo `park_evidence`: index entries back from HEAD, exclude entry and hook removed."
    _git("reset", "-q", "--", EVIDENCE, check=False)
    excl = _git_path("info/exclude")
    if excl.exists():
        excl.write_text("".join(l + "\n" for l in excl.read_text().splitlines() if l != f"/{EVIDENCE}/"))
    hook = _git_path("hooks/pre-commit")
    if hook.exists() and _MARK in hook.read_text(): hook.unlink()
    left = _git("status", "--porcelain", "--", EVIDENCE).strip()
    print(f"unparked {EVIDENCE}" + (f"; not as in HEAD: {left.splitlines()[:3]}" if left else ": as in HEAD"))


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cub", type=Path, default=ROOT.parent / "shared" / "datasets" / "cub100")
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--limit-mb", type=float, default=62.0, help="tracked files + wheels + images must stay under this")
    ap.add_argument("--no-wheels", action="store_true")
    ap.add_argument("--park-evidence", action=argparse.BooleanOptionalAction, default=None,
                    help=f"take {EVIDENCE} out of what travels (default: when the tracked files leave < 16 MiB)")
    ap.add_argument("--unpark", action="store_true", help="undo --park-evidence after the device calls, then exit")
    a = ap.parse_args()
    if a.unpark: return unpark_evidence()
    wb = 0 if a.no_wheels else wheels(ROOT / ".whl")
    print(f"wheels: {wb / 2**20:.1f} MiB in .whl/")
    tb = tracked_bytes()
    print(f"tracked files of the checkout: {tb / 2**20:.1f} MiB")
    if a.park_evidence or (a.park_evidence is None and (tb + wb) / 2**20 > a.limit_mb - 16):
        park_evidence()
        tb = tracked_bytes()
        print(f"tracked files without {EVIDENCE}: {tb / 2**20:.1f} MiB")
    wb += tb
    src = a.cub / "CUB_200_2011" if (a.cub / "CUB_200_2011").is_dir() else a.cub
    dst = ROOT / ".gpu_data" / "cub100" / "CUB_200_2011"
    side, q = a.side, a.quality
    while True:
        ib = reencode(src, dst, side, q)
        print(f"cub100 re-encoded: shorter side {side} px, JPEG quality {q}: {ib / 2**20:.1f} MiB")
        if (ib + wb) / 2**20 <= a.limit_mb: break
        if q > 60: q -= 5
        elif side * 0.875 >= 64: side = int(side * 0.875)
        else: raise SystemExit(f"even at {side} px and quality {q} the carry is {(ib + wb) / 2**20:.1f} MiB, over "
                               f"{a.limit_mb} MiB: carry less (--park-evidence, --no-wheels) or raise --limit-mb")
    print(f"carry: checkout + .whl + .gpu_data = {(ib + wb) / 2**20:.1f} MiB (limit {a.limit_mb} MiB of the 64 MiB per call)")


if __name__ == "__main__":
    main()
