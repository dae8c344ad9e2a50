"""fastprogress without stray '█' characters.

Two things in fastprogress 1.x leave '█' in logs and terminals: its console bar prints its fill character and a
carriage return when it is created (to test the terminal's encoding), and its `printing()` tests
`getattr(stdout, 'isatty', False)`, the method object, which is always true, so bars are drawn into pipes and log
files too. `quiet_fill_check()` encodes the character instead of printing it, and asks `sys.stdout.isatty()`;
on a terminal, bars are drawn as before."""
from __future__ import annotations

import os
import shutil
import sys

__all__ = ["quiet_fill_check"]


def quiet_fill_check() -> None:
    "Patch `fastprogress.fastprogress.ConsoleProgressBar.__init__` once (idempotent)."
    from fastprogress import fastprogress as fp
    if getattr(fp.ConsoleProgressBar.__init__, "_quiet", False): return

    def __init__(self, gen, total=None, display=True, leave=True, parent=None, master=None, txt_len=60):
        self.cols, _ = shutil.get_terminal_size((100, 40))
        self.cols = min(self.cols, fp.MAX_COLS)
        self.length = self.cols - txt_len
        self.max_len, self.prefix = 0, ""
        try: self.fill.encode(getattr(sys.stdout, "encoding", None) or "ascii")
        except (UnicodeEncodeError, LookupError): self.fill = "X"
        fp.ProgressBar.__init__(self, gen, total, display, leave, parent, master)

    def printing() -> bool:
        if fp.NO_BAR: return False
        isatty = getattr(sys.stdout, "isatty", None)
        return bool(isatty and isatty()) or fp.IN_NOTEBOOK or "PYCHARM_HOSTED" in os.environ

    __init__._quiet = True
    fp.ConsoleProgressBar.__init__ = __init__
    fp.printing = printing
