"""A run's example images: a few test thumbnails `train` stores in the run directory, the demo's only examples."""
from __future__ import annotations

import json
from pathlib import Path

from ..checks import safe_component
from ..safeio import save_atomic
from .files import read_json

__all__ = ["write_examples", "read_examples", "EXAMPLES"]

EXAMPLES = "examples"   # folder of test thumbnails (PNG) + examples.json


def write_examples(run_dir, items, labels, classes, n: int = 6, side: int = 256) -> list[dict]:
    """Up to `n` test images covering as many classes as possible, as PNG thumbnails (longest side `side`) in
    `run_dir/examples/` with examples.json (file, true class). The demo shows these and nothing else: it never
    follows a data root written in a file. An unreadable image is skipped."""
    from ..images import safe_image
    d = Path(run_dir) / EXAMPLES
    d.mkdir(exist_ok=True)
    seen: dict[int, int] = {}
    keyed = []
    for i, c in enumerate(labels):   # first item of each class, then the second...
        keyed.append((seen.get(int(c), 0), int(c), i)); seen[int(c)] = seen.get(int(c), 0) + 1
    out = []
    for _, c, i in sorted(keyed):
        if len(out) >= n: break
        try: img = safe_image(items[i])
        except ValueError: continue
        img.thumbnail((side, side))
        name = f"{len(out):02d}.png"
        img.save(d / name)
        out.append({"file": name, "class": str(classes[c])})
    save_atomic(lambda t: Path(t).write_text(json.dumps(out, indent=2)), d / "examples.json")
    return out


def read_examples(run_dir) -> list[tuple[Path, str]]:
    "`(png_path, true_class)` of a run's stored examples; only plain files inside `run_dir/examples/` are returned."
    d = Path(run_dir) / EXAMPLES
    f = d / "examples.json"
    if not f.is_file(): return []
    data, out = read_json(f), []
    for e in data if isinstance(data, list) else []:
        name = e.get("file") if isinstance(e, dict) else None
        p = d / str(name)
        if not (isinstance(name, str) and safe_component(name) and p.is_file() and not p.is_symlink()): continue
        out.append((p, str(e.get("class", ""))))
    return out
