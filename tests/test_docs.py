"""The README's layout and ARCHITECTURE.md name every module of the package, and only those."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tunebook"


def modules() -> set[str]:
    """The package's modules as ``folder/module`` (a subpackage inside a folder, such as ``card/tasks``, is one)."""
    found = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    for folder in (p.parent for p in PACKAGE.glob("*/__init__.py")):
        found |= {f"{folder.name}/{p.stem}" for p in folder.glob("*.py")} - {f"{folder.name}/__init__"}
        found |= {f"{folder.name}/{p.parent.name}" for p in folder.glob("*/__init__.py")}
    return found


def test_readme_layout_names_every_module():
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    block = layout.split("src/tunebook/", 1)[1].split("examples/", 1)[0]
    top, folders = block.split("\n", 1)
    named = set(re.findall(r"[a-z_]+", top.split(";", 1)[0]))
    for folder, listed in re.findall(r"^ +([a-z_]+)/ +([a-z_, /]+)", folders, re.M):
        named |= {f"{folder}/{name}" for name in re.findall(r"[a-z_]+", listed)}
    assert named == modules()


def test_architecture_has_one_sentence_per_module():
    table = (ROOT / "ARCHITECTURE.md").read_text().split("## Modules", 1)[1].split("## ", 1)[0]
    named = {
        name for cell in re.findall(r"^\| (`[^|]+`) \|", table, re.M) for name in re.findall(r"`([a-z_/]+)`", cell)
    }
    assert named == modules()
