"""README.md stays in sync with the code: the operator table is generated from the rule registry."""

from __future__ import annotations

from pathlib import Path

from graphprune import opstable

README = Path(__file__).resolve().parents[1] / "README.md"


def test_operator_table_matches_registry():
    current = opstable.current(README)
    assert current is not None, "README.md lacks the operator table markers"
    assert current == opstable.section(), "README operator table drifted: run `python -m graphprune.opstable --write`"


def test_readme_has_exactly_the_two_setup_commands():
    text = README.read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    cmds = [ln.split("#")[0].strip() for ln in block.strip().splitlines()]
    assert cmds == ["make demo", "make test"]
