"""How `cskd-fastai` reports failures: expected bad input is one `error:` line naming the cause (exit 2), anything
else one line plus where the traceback is (exit 1); never a bare traceback."""
from __future__ import annotations

import os

import typer

__all__ = ["_guard", "_fail", "_one_line"]


def _fail(msg: str, code: int = 2):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _one_line(e: BaseException) -> str:
    """The error's informative line: fastai wraps a callback's error under an "Exception occured in `CB` when calling
    event `EV`:" header, and torch ends some messages with a "For more information, ..." hint; both are dropped."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    lines = [l for l in lines if not (l.startswith("Exception occured in `") and l.endswith(":"))
             and not l.startswith("For more information")]
    msg = lines[0] if lines else type(e).__name__
    return msg.split(": ", 1)[1] if msg.startswith(("cskd_fastai.", "ValueError: ")) and ": " in msg else msg


def _guard(fn, *args, **kwargs):
    "Run a command; expected bad input becomes one `error:` line (exit 2), anything else one line + exit 1."
    from .datasets import DatasetLayoutError
    from .download import DownloadError
    from .recipe import RecipeError
    from .rundir import RunDirError
    from .train import RunExistsError, TrainingDiverged
    if os.environ.get("CSKD_DEBUG"): return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except (RecipeError, DatasetLayoutError, RunDirError, RunExistsError, DownloadError) as e: _fail(str(e))
    except TrainingDiverged as e: _fail(_one_line(e), 1)
    except OSError as e:
        import errno
        if e.errno in (errno.ENOSPC, errno.EDQUOT): _fail(_one_line(e), 1)
        _fail(f"{type(e).__name__}: {_one_line(e)} (set CSKD_DEBUG=1 for the traceback)", 1)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e: _fail(_one_line(e))
    except KeyboardInterrupt: _fail("interrupted; finished epochs are checkpointed: rerun with --resume", 130)
    except typer.Exit: raise
    except Exception as e:
        _fail(f"{type(e).__name__}: {_one_line(e)} (set CSKD_DEBUG=1 for the traceback)", 1)
