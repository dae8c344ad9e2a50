"""File writes that never leave half a file or a temp file behind, say "no space left" plainly, and hashes."""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

__all__ = ["save_atomic", "disk_full_message", "sha256"]


def disk_full_message(path, e: BaseException) -> str | None:
    "'no space left' in one line when `e` (an OSError, or torch's RuntimeError from its zip writer) means a full disk."
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full and isinstance(e, RuntimeError) and ("enforce fail" in str(e) or "write" in str(e).lower()):
        try:
            import shutil
            full = shutil.disk_usage(Path(path).parent).free < 64 * 2**20   # torch hides ENOSPC behind its message
        except OSError: full = False
    return f"no space left on device while writing {path}; free some space, then rerun with --resume" if full else None


def save_atomic(write, path) -> None:
    """`write(tmp_path)` then rename to `path`: a reader never sees half a file, a failed write leaves no temp file
    behind, and a full disk is reported as such (torch says `[enforce fail at inline_container.cc]`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        msg = disk_full_message(path, e)
        if msg: raise OSError(errno.ENOSPC, msg) from None
        raise


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""): h.update(chunk)
    return h.hexdigest()
