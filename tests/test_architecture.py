"""The house's layers (docs/architecture.md): every import inside `cskd_fastai/`, lazy ones too, runs downward or
within its layer, so there is no import circle; and no library module grows past 300 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cskd_fastai"

# Bottom to top. A module may import modules of its own layer and of the layers below, never above.
LAYERS = {
    "foundation": ("checks", "safeio", "images", "progress", "variants", "transforms", "batch_transforms", "models",
                   "metrics", "losses", "datasets", "embeddings", "download", "distributed", "testing.replicas"),
    "data": ("loaders", "cache", "pipeline"),
    "run files": ("rundir",),
    "callbacks": ("callbacks",),
    "methods": ("methods", "learner", "recipe", "speed", "fingerprint"),
    "runs": ("train", "finish", "evaluate", "predict", "serving", "compare", "analysis", "rebuild", "sets", "run_model", "testing",
             "unfamiliar", "shift"),
    "apps": ("cli", "cli_errors", "app", "app_text", "__main__"),
}
ORDER = list(LAYERS)


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__": parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(mods: dict[str, Path]) -> dict[str, set]:
    "Module -> the package modules it imports (every import statement, at module level or inside functions)."
    graph = {}
    for m, f in mods.items():
        is_pkg, deps = f.name == "__init__.py", set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("cskd_fastai.")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if m else []
                    base = base if is_pkg else base[:-1]
                    base = base[: len(base) - (node.level - 1)] + ([node.module] if node.module else [])
                    base = ".".join(base)
                elif (node.module or "").startswith("cskd_fastai"):
                    base = node.module.partition(".")[2]
                else: continue
                names = [f"{base}.{a.name}".strip(".") for a in node.names]
            else: continue
            for d in names:
                while d and d not in mods: d = d.rpartition(".")[0]
                if d and d != m: deps.add(d)
        graph[m] = deps
    return graph


def layer(m: str) -> str:
    if m == "": return "apps"   # the package's __init__ (its public names import lazily, by string)
    best = None
    for name, prefixes in LAYERS.items():
        for p in prefixes:
            if (m == p or m.startswith(p + ".")) and (best is None or len(p) > len(best[1])): best = (name, p)
    if best is None: raise AssertionError(f"cskd_fastai.{m} is in no layer of tests/test_architecture.py: add it")
    return best[0]


def upward(graph: dict) -> list[str]:
    return [f"{m or 'cskd_fastai'} ({layer(m)}) imports {d} ({layer(d)})" for m, ds in sorted(graph.items())
            for d in sorted(ds) if ORDER.index(layer(d)) > ORDER.index(layer(m))]


def cycles(graph: dict) -> list[list[str]]:
    "Strongly connected components of more than one module (Tarjan)."
    index, low, stack, on, out = {}, {}, [], set(), []
    def visit(v):
        index[v] = low[v] = len(index); stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in graph:
        if v not in index: visit(v)
    return out


def test_every_import_runs_downward():
    bad = upward(imports(modules()))
    assert not bad, "imports running up a layer:\n" + "\n".join(bad)


def test_no_import_circle():
    assert not cycles(imports(modules()))


def test_the_checks_can_fail():
    "A planted back-edge (recipe imports cli, which imports recipe) is caught by both checks."
    graph = imports(modules())
    graph["recipe"] = graph["recipe"] | {"cli"}
    assert upward(graph) == ["recipe (methods) imports cli (apps)"]
    assert any({"recipe", "cli"} <= set(c) for c in cycles(graph))


@pytest.mark.parametrize("limit", [300])
def test_no_library_module_over_300_lines(limit):
    long = {m: n for m, f in modules().items() if (n := len(f.read_text(encoding="utf-8").splitlines())) > limit}
    assert not long, f"modules over {limit} lines: {long}"


SIDE_EFFECTS = '''
import ast, importlib, pathlib, pkgutil, sys, warnings
import fastprogress.fastprogress as fp
import cskd_fastai
# first every third-party module the package imports anywhere (accelerate, for one, installs a filter of its own)
for f in pathlib.Path(cskd_fastai.__file__).parent.rglob("*.py"):
    for n in ast.walk(ast.parse(f.read_text())):
        names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module] if isinstance(n, ast.ImportFrom) and not n.level else []
        for name in names:
            if name and not name.startswith("cskd_fastai"):
                try: importlib.import_module(name)
                except Exception: pass
filters, bar_init, printing = list(warnings.filters), fp.ConsoleProgressBar.__init__, fp.printing
for m in pkgutil.walk_packages(cskd_fastai.__path__, "cskd_fastai."):
    if m.name != "cskd_fastai.__main__": importlib.import_module(m.name)
assert warnings.filters == filters, "a module installed a warning filter at import"
assert fp.ConsoleProgressBar.__init__ is bar_init and fp.printing is printing, "a module patched fastprogress at import"
print("clean")
'''

QUIET = '''
import sys; sys.path.insert(0, sys.argv[1])
from conftest import make_dls, write_folder
import tempfile, pathlib
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from cskd_fastai.callbacks import CSKD
from test_callback import TinyNet
root = write_folder(pathlib.Path(tempfile.mkdtemp()), {"train": {"cat": 9, "dog": 7, "emu": 5}, "test": {"cat": 3, "dog": 3}})
Learner(make_dls(root, paired=False), TinyNet(), loss_func=CrossEntropyLossFlat(), cbs=[CSKD()]).fit(2)
'''


def test_importing_the_package_changes_nothing_outside_it():
    import subprocess, sys
    r = subprocess.run([sys.executable, "-c", SIDE_EFFECTS], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr[-2000:]


def test_a_fit_from_python_prints_no_bar_frames_into_a_pipe():
    "A plain fastai Learner with a CS-KD callback, stdout a pipe: the epoch table, no '\\r' frames and no '█'."
    import subprocess, sys
    r = subprocess.run([sys.executable, "-c", QUIET, str(Path(__file__).parent)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["epoch", "train_loss", "valid_loss"] and len(lines) == 3, r.stdout
    assert "\r" not in r.stdout and "█" not in r.stdout
