"""A run directory's file names, and reading and writing its files so that a bad one is one line naming it: JSON
and YAML readers, SHA-256 records (hashes.json) written with each pickle and checked before it is loaded."""
from __future__ import annotations

import json
from pathlib import Path

from ..safeio import save_atomic, sha256

__all__ = ["RECIPE", "ENV", "HISTORY", "METRICS", "LOGITS", "EXPORT", "CHECKPOINT", "BEST", "DONE", "HASHES", "LOCK",
           "PNGS", "TRUST", "TRUST_LOGITS", "WEIGHTS", "save_weights", "load_weights", "RunDirError", "RunLockedError", "read_json", "read_yaml", "record_hash", "save_hashed", "verify_hash",
           "read_verified", "load_hashed", "load_checkpoint"]

RECIPE, ENV, HISTORY, METRICS, LOGITS, EXPORT, CHECKPOINT, BEST, WEIGHTS, DONE, HASHES, LOCK = (
    "recipe.yaml", "env.json", "history.csv", "metrics.json", "logits.pt", "export.pkl", "checkpoint.pth", "best.pth",
    "model.safetensors", "DONE", "hashes.json", ".lock")
PNGS = ("reliability.png", "curves.png")
TRUST = "trust.json"   # the trust evaluations a recipe's `eval:` asks for (`evaluate.write_trust`), archived too
TRUST_LOGITS = "trust_logits.npz"   # their logits (OOD sets, corrupted images), compact like logits.npz, archived too


class RunDirError(ValueError):
    "A run directory is missing or incomplete (one-line message naming the file)."


class RunLockedError(RunDirError):
    "Another live process is writing this run directory."


# ---- files that name themselves when they are unreadable ---------------------------------------------------
def read_json(path) -> dict:
    "A JSON file's content; a missing or corrupt file is one `RunDirError` line naming it."
    path = Path(path)
    try: return json.loads(path.read_text())
    except FileNotFoundError: raise RunDirError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is corrupt ({e}); restore it from a copy or retrain the run") from None


def read_yaml(path):
    import yaml
    path = Path(path)
    try: return yaml.safe_load(path.read_text())
    except FileNotFoundError: raise RunDirError(f"{path} is missing") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        msg = " ".join(str(e).split())
        raise RunDirError(f"{path} is corrupt ({msg}); restore it from a copy or retrain the run") from None


# ---- integrity of the pickles ------------------------------------------------------------------------------
def _hashes(run_dir: Path) -> dict:
    "hashes.json's table ({} if there is none); one `RunDirError` line when it is not a table."
    f = run_dir / HASHES
    table = read_json(f) if f.exists() else {}
    if not isinstance(table, dict):
        raise RunDirError(f"{f} is not a table of file digests; restore it or retrain the run")
    return table


def _write_hashes(run_dir: Path, table: dict) -> None:
    save_atomic(lambda t: Path(t).write_text(json.dumps(table, indent=2)), run_dir / HASHES)


def record_hash(run_dir, name: str) -> str:
    "Record the SHA-256 of `run_dir/name`, as it is now, in hashes.json (rewritten atomically); returns the digest."
    run_dir = Path(run_dir)
    table = _hashes(run_dir)
    table[name] = [sha256(run_dir / name)]
    _write_hashes(run_dir, table)
    return table[name][0]


def save_hashed(write, run_dir, name: str) -> None:
    """Write `run_dir/name` atomically through `write(tmp_path)` and record its SHA-256.

    Crash-safe: the new digest is recorded next to the old one before the rename and alone after it, so whichever
    file a kill leaves in place still verifies (a resumable checkpoint is never refused for our own crash)."""
    run_dir = Path(run_dir)
    digest = {}
    def write_and_hash(tmp):
        write(tmp)
        digest["new"] = sha256(tmp)
        table = _hashes(run_dir)
        old = table.get(name, [])
        _write_hashes(run_dir, {**table, name: [digest["new"], *([old] if isinstance(old, str) else old)]})
    save_atomic(write_and_hash, run_dir / name)
    _write_hashes(run_dir, {**_hashes(run_dir), name: [digest["new"]]})


def _recorded(run_dir: Path, name: str) -> list:
    "The SHA-256 digests recorded for `name`; one `RunDirError` line when hashes.json is not the table it should be."
    want = _hashes(run_dir).get(name) or []
    want = [want] if isinstance(want, str) else want
    if not isinstance(want, list) or not all(isinstance(w, str) for w in want):
        raise RunDirError(f"{run_dir / HASHES}: the entry for {name} is not a list of SHA-256 digests; restore it or "
                          f"retrain the run")
    return want


def read_verified(run_dir, name: str) -> bytes:
    """The bytes of `run_dir/name` if their SHA-256 matches one recorded when it was written; one `RunDirError` line
    otherwise. The file is read once and the very bytes that were hashed are what the caller deserializes: a file
    swapped between the check and the load is never loaded."""
    import hashlib
    run_dir = Path(run_dir)
    f = run_dir / name
    want = _recorded(run_dir, name)
    try: data = f.read_bytes()
    except FileNotFoundError: raise RunDirError(f"run dir {run_dir}: missing {name}") from None
    if not want:
        raise RunDirError(f"{f} has no recorded SHA-256 in {HASHES}, so it is not loaded (only files whose digest was "
                          f"recorded when they were written are); "
                          f"retrain the run, or record it with `cskd-fastai trust {run_dir}` if you made the file yourself")
    if hashlib.sha256(data).hexdigest() not in want:
        raise RunDirError(f"{f} does not match the SHA-256 recorded when it was written (changed, truncated or "
                          f"replaced since), so it is not loaded; restore the original or retrain the run")
    return data


def verify_hash(run_dir, name: str) -> Path:
    "`run_dir/name` if its SHA-256 matches the recorded one (`read_verified`); for callers that need only the check."
    read_verified(run_dir, name)
    return Path(run_dir) / name


def load_hashed(run_dir, name: str, weights_only: bool = False):
    "`torch.load` of the verified bytes of `run_dir/name` (on the CPU); an unreadable file is one `RunDirError` line."
    import io
    import torch
    data = read_verified(run_dir, name)
    try: return torch.load(io.BytesIO(data), map_location="cpu", weights_only=weights_only)
    except Exception as e:
        raise RunDirError(f"cannot read {Path(run_dir) / name} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                          f"delete the run directory and retrain") from None


def load_checkpoint(run_dir) -> dict:
    "The run's checkpoint (model, optimizer, RNG states, fingerprint), after its hash is verified."
    return load_hashed(run_dir, CHECKPOINT)




# ---- the final model's weights: a format that cannot run code --------------------------------------------------
def save_weights(run_dir, model, classes) -> None:
    """The final model's state dict as safetensors (tensors only: loading it cannot run code), atomic and hashed,
    with the class names of its outputs in the file's metadata (hashed with the weights)."""
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"classes": json.dumps([str(c) for c in classes])}
    save_hashed(lambda t: save_file(state, str(t), metadata=meta), run_dir, WEIGHTS)


def load_weights(run_dir) -> tuple[dict, list]:
    """(state dict, class names) of the run's final weights: verified bytes, parsed as safetensors (no code runs);
    one `RunDirError` line otherwise."""
    from safetensors.torch import load as load_safetensors
    f = Path(run_dir) / WEIGHTS
    data = read_verified(run_dir, WEIGHTS)
    try:
        n = int.from_bytes(data[:8], "little")                      # the format's header: its length, then JSON
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        return load_safetensors(data), json.loads(meta.get("classes", "[]"))
    except Exception as e:
        raise RunDirError(f"cannot read {f} ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                          f"restore it or retrain the run") from None
