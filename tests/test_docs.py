"""The README and docs/ describe what exists: every command, recipe, script and link they name resolves, the README
stays one screen, and the results summary is the one the archived runs give (one source per number)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    "GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return s.replace(" ", "-")


def anchors(md: Path) -> set:
    return {slug(h) for h in re.findall(r"(?m)^#+ (.+)$", md.read_text(encoding="utf-8"))}


def test_slug_matches_githubs_rule():
    assert slug("Prior art: what is borrowed and what is this project's") == "prior-art-what-is-borrowed-and-what-is-this-projects"
    assert slug("Which method? The decision table") == "which-method-the-decision-table"


def test_readme_is_one_screen_with_the_promised_sections():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    heads = re.findall(r"(?m)^## (.+)$", text)
    for h in ("What CS-KD is", "Install", "The main command", "In your fastai code", "Methods at a glance",
              "Which method? The decision table", "Documentation", "Tests", "Citation", "Licence"):
        assert h in heads, h
    first_python = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    assert "fine_tune(" in first_python and "efficientnet_lite0" in first_python   # the lesson-one form first


@pytest.mark.parametrize("md", DOCS, ids=lambda p: p.name)
def test_links_resolve(md):
    text = md.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target): continue
        path, _, anchor = target.partition("#")
        f = (md.parent / path).resolve() if path else md
        assert f.exists(), f"{md.name}: link to {target} does not resolve"
        if anchor and f.suffix == ".md":
            assert anchor in anchors(f), f"{md.name}: {target}: no heading gives #{anchor}"


def test_named_commands_recipes_and_scripts_exist():
    from cskd_fastai.cli import app
    import typer.main
    commands = set(typer.main.get_command(app).commands)
    for md in DOCS:
        text = md.read_text(encoding="utf-8")
        for cmd in re.findall(r"cskd-fastai ([a-z][a-z-]+)", text):
            assert cmd in commands, f"{md.name} names `cskd-fastai {cmd}`, which is not a command ({sorted(commands)})"
        for recipe in set(re.findall(r"recipes/[\w.-]+\.yaml", text)):
            assert (ROOT / recipe).exists(), f"{md.name} names {recipe}, which does not exist"
        for script in set(re.findall(r"(?:docs/scripts|bench)/[\w-]+\.py", text)):
            assert (ROOT / script).exists(), f"{md.name} names {script}, which does not exist"


def _scripts():
    "docs/scripts' table builders, imported in this process (torch is imported once, not once per table)."
    sys.path.insert(0, str(ROOT / "docs" / "scripts"))
    import marked_block, summary_table, trust_grid_table
    return marked_block, summary_table, trust_grid_table


def test_results_summary_is_generated_from_the_archived_runs():
    mb, st, _ = _scripts()
    assert mb.refresh(ROOT / "docs" / "results.md", st.START, st.END, st.summary(ROOT / "docs" / "evidence"), "check",
                      "python docs/scripts/summary_table.py docs/evidence --write docs/results.md") is None


def test_results_trust_tables_are_generated_from_the_archived_runs():
    mb, _, tg = _scripts()
    names = re.findall(r"<!-- trust-grid:([\w.-]+):start -->", (ROOT / "docs" / "results.md").read_text(encoding="utf-8"))
    assert names, "docs/results.md has no generated trust-grid block"
    for name in names:
        assert mb.refresh(ROOT / "docs" / "results.md", *tg.markers(name), tg.tables(ROOT / "docs" / "evidence" / name),
                          "check", f"python docs/scripts/trust_grid_table.py docs/evidence/{name} --write docs/results.md") is None


def test_a_stale_or_missing_block_is_named_and_a_write_fixes_it(tmp_path):
    mb, _, _ = _scripts()
    doc = tmp_path / "r.md"
    doc.write_text("intro\n<!-- a:start -->\nold table\n<!-- a:end -->\nrest\n", encoding="utf-8")
    assert "is stale: run FIX" in mb.refresh(doc, "<!-- a:start -->", "<!-- a:end -->", "new table\n", "check", "FIX")
    assert "old table" in doc.read_text()                                       # a check never writes
    assert mb.refresh(doc, "<!-- a:start -->", "<!-- a:end -->", "new table\n", "write", "FIX") is None
    assert doc.read_text() == "intro\n<!-- a:start -->\nnew table\n<!-- a:end -->\nrest\n"
    assert mb.refresh(doc, "<!-- a:start -->", "<!-- a:end -->", "new table\n", "check", "FIX") is None
    assert "has no <!-- b:start -->" in mb.refresh(doc, "<!-- b:start -->", "<!-- b:end -->", "x\n", "check", "FIX")


def _table(md: str) -> list[dict]:
    lines = [l for l in md.splitlines() if l.startswith("|")]
    head = [c.strip() for c in lines[0].split("|")[1:-1]]
    return [dict(zip(head, (c.strip() for c in l.split("|")[1:-1]))) for l in lines[2:]]


def test_readme_sample_table_is_what_compare_gives_on_the_archived_quickstart():
    from cskd_fastai.compare import collect, summarize, to_markdown
    text = README.read_text(encoding="utf-8")
    i = text.index("| method | seeds | top-1 err (%)")
    sample = _table(text[i:text.index("\n\n", i)])
    got = {r["method"]: r for r in _table(to_markdown(summarize(collect([ROOT / "docs" / "evidence" / "quickstart"]))))}
    assert [r["method"] for r in sample] == sorted(got) and len(sample) == 2
    for row in sample:
        assert row == {k: got[row["method"]][k] for k in row}


def test_prior_art_is_named_in_methods_md_and_the_docstrings():
    methods = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    for name in ("PS-KD", "Online Label Smoothing", "Learning with Retrospection", "DLB", "BAKE", "Decoupled KD"):
        assert name in methods, name
    from cskd_fastai.callbacks.cskd import CSKD
    from cskd_fastai.callbacks import cskd_stored
    assert "BAKE" in CSKD.__doc__
    for name in ("PS-KD", "Online Label Smoothing", "Learning with Retrospection", "DLB"):
        assert name in cskd_stored.__doc__, name
