"""The README's layout and ARCHITECTURE.md name every module of the package, and only those."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tunebook"
MODULES = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"} | {
    p.parent.name for p in PACKAGE.glob("*/__init__.py")
}


def test_readme_layout_names_every_module():
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    block = layout.split("src/tunebook/", 1)[1].split("examples/", 1)[0].split("(ARCHITECTURE.md", 1)[0]
    assert set(re.findall(r"[a-z_]+", block)) == MODULES


def test_architecture_has_one_sentence_per_module():
    table = (ROOT / "ARCHITECTURE.md").read_text().split("## Modules", 1)[1].split("## ", 1)[0]
    named = {
        name for cell in re.findall(r"^\| (`[^|]+`) \|", table, re.M) for name in re.findall(r"`([a-z_]+)`", cell)
    }
    assert named == MODULES
