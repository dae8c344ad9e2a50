"The README's Python quickstart runs as written (in a fresh process, in a scratch folder)."
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_quickstart_runs(tmp_path):
    blocks = python_blocks()
    assert blocks, "README has no python block"
    r = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True, timeout=480,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    # nothing from this package warns (torch's jit notice about fastai's import and fastai's pickle notice for
    # `load_learner` are theirs: the package installs no filter to hide them, docs/architecture.md)
    assert "cskd_fastai" not in r.stderr, r.stderr[-3000:]
    assert "\u2588" not in r.stdout                            # no progress-bar residue in a pipe
    assert (tmp_path / "digits.pkl").exists()
    pred, truth = r.stdout.strip().splitlines()[-1].split()
    assert pred.isdigit() and truth.isdigit()


def test_readme_commands_match_ci():
    text = README.read_text()
    assert "cskd-fastai train recipes/quickstart.yaml" in text
    test_cmd = re.search(r"```bash\n(python -m pytest[^\n]*)\n```", text).group(1)
    assert test_cmd in (README.parent / ".ci" / "run").read_text()
