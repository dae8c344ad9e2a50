"""The generated tables in docs/*.md live between two HTML comments. One helper writes or checks such a block, so
summary_table.py and trust_grid_table.py (and tests/test_docs.py, in process) agree on what "stale" means."""
from __future__ import annotations

from pathlib import Path


def span(text: str, start: str, end: str) -> tuple[int, int] | None:
    "Where the block's body starts and ends (the line after `start`, up to `end`), or None when it is missing."
    i, j = text.find(start), text.find(end)
    return None if i < 0 or j < i else (i + len(start) + 1, j)


def refresh(doc: Path | str, start: str, end: str, body: str, mode: str, fix: str) -> str | None:
    """mode "write": put `body` into the block; mode "check": leave the file alone. Returns None when all is well,
    else one line naming the cause and `fix` (the command that regenerates the block)."""
    doc = Path(doc)
    text = doc.read_text(encoding="utf-8")
    s = span(text, start, end)
    if s is None: return f"{doc} has no {start} ... {end} block: add the two markers where the table belongs"
    if mode == "write": doc.write_text(text[:s[0]] + body + text[s[1]:], encoding="utf-8")
    elif text[s[0]:s[1]] != body: return f"{doc}'s block {start} is stale: run {fix}"
    return None
