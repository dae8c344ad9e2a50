"""Serve the CS-KD demo for trained runs: `python apps/demo.py RUN_DIR [RUN_DIR ...] [--host 127.0.0.1] [--port N]`.

Typical use compares a CE and a CS-KD run of one recipe side by side. Only the run directories named here are
loaded: their export.pkl is a pickle, and unpickling runs code, so never point this at a run you don't trust.
Uploads are only ever decoded as images. A missing or incomplete run directory is one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    "The command line: run directories, host (loopback by default) and port."
    p = argparse.ArgumentParser(prog="demo", description="Serve the CS-KD demo (Gradio) for finished training runs.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories of `cskd-fastai train`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the app to the network)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    "Serve until interrupted; 2 on a bad run directory or an unusable host/port."
    args = parse_args(argv)
    # keep a bad run dir to one line on stderr: torch's import-time deprecation notice, and fastai's pickle warning
    # about the export the operator named on purpose (the module doc says why that is the trust boundary)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"load_learner. uses Python's insecure pickle", category=UserWarning)
    try:
        from cskd_fastai.app import launch
    except ImportError:  # run from a checkout that isn't pip-installed: the package sits next to apps/
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from cskd_fastai.app import launch
    try:
        launch(args.run_dirs, host=args.host, port=args.port)
    except (ValueError, OSError) as e:  # RunDirError is a ValueError; a taken port is an OSError
        print(f"demo: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
