"""The README's tour code runs as written and says what the README claims."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has a python tour"
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)
    load, tables = ns["load"], ns["tables"]
    assert len(load.plans[3].items) == 4 and load.problems == []
    assert len(tables.read_items_table(load, rank=3)) == 4


def test_readme_names_the_two_setup_commands():
    text = README.read_text()
    setup = text.split("## Set up", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make \w+", setup, re.M)
    assert commands == ["make lab", "make test"]
    assert "make test" in (README.parent / ".ci" / "run").read_text()
