"""The one-screen summary at the top of docs/results.md, generated from the archived runs' metrics.json (what `train`
wrote from the float32 logits), so the summary, the README's decision table that links to it and the evidence
cannot drift apart: `tests/test_docs.py` fails when the committed summary is not what this prints.

    python docs/scripts/summary_table.py docs/evidence                          # print it
    python docs/scripts/summary_table.py docs/evidence --write docs/results.md  # refresh the marked block
    python docs/scripts/summary_table.py docs/evidence --check docs/results.md  # exit 1 when it is stale

One row per recipe and method label (seeds pooled): test top-1 error, ECE (15 equal-width bins) and NLL at the
final epoch, mean ± sample std over seeds. Temperature-scaled numbers and conformal sets are in the sections below
(`cskd-fastai compare FOLDER` recomputes them from the stored logits).
"""
import json
import statistics
import sys
from pathlib import Path

START, END = "<!-- summary:start (docs/scripts/summary_table.py) -->", "<!-- summary:end -->"


def fmt(xs, scale=1.0, digits=2):
    xs = [x * scale for x in xs]
    m = f"{statistics.mean(xs):.{digits}f}"
    return m if len(xs) < 2 else f"{m} ± {statistics.stdev(xs):.{digits}f}"


def summary(folder: Path) -> str:
    rows = {}
    for f in sorted(folder.glob("*/*/seed*/metrics.json")):
        if not (f.parent / "DONE").exists(): continue
        m = json.loads(f.read_text())
        key = (m["facts"]["recipe"], m["facts"]["label"])
        rows.setdefault(key, []).append(m["test"])
    out = ["| recipe | method | seeds | top-1 err (%) | ECE | NLL |", "|---|---|---|---|---|---|"]
    for (recipe, label), ts in sorted(rows.items()):
        out.append(f"| {recipe} | {label} | {len(ts)} | {fmt([t['top1_err'] for t in ts], 100)} | "
                   f"{fmt([t['ece'] for t in ts], digits=3)} | {fmt([t['nll'] for t in ts], digits=3)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    from marked_block import refresh
    args = sys.argv[1:]
    if not args or args[0].startswith("--"): sys.exit(__doc__)
    table = summary(Path(args[0]))
    if len(args) == 3 and args[1] in ("--write", "--check"):
        sys.exit(refresh(args[2], START, END, table, args[1][2:],
                         f"python docs/scripts/summary_table.py {args[0]} --write {args[2]}"))
    else: print(table, end="")
