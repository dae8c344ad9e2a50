"""One writer per run directory: an `flock` held for as long as a process writes it."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .files import LOCK, RunLockedError

__all__ = ["run_lock"]


@contextmanager
def run_lock(run_dir) -> Iterator[Path]:
    """Hold an exclusive lock on `run_dir` (created if needed) for as long as the block runs.

    The lock is an `flock` on `run_dir/.lock`, which holds the owner's pid for the error message. The kernel
    releases it when its process exits, however it exits, so a lock left by a killed process is stale by
    construction and is simply taken over."""
    import fcntl
    import socket
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"run dir {run_dir} is being written by {owner}; wait for it to finish, or "
                                 f"train into another --out") from None
        try: same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError: same = False
        if same: break
        os.close(fd)   # the previous owner removed the file between our open and our lock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield run_dir
    finally:
        try: path.unlink()
        except FileNotFoundError: pass
        os.close(fd)
