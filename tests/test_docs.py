"""The README's layout and ARCHITECTURE.md name every module of the package, and only those; the README stays short
and the documentation site builds in strict mode."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tunebook"
README_MAX_LINES = 150


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


def test_tests_are_laid_out_as_the_package():
    tests = ROOT / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders <= subpackages, f"test folders named after no subpackage: {sorted(folders - subpackages)}"
    at_top = {p.name for p in tests.glob("test_*.py")}
    assert at_top == {"test_docs.py", "test_environment.py", "test_layers.py"}, "a module's tests go in its folder"


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move the detail into docs/"


def test_documentation_site_builds_in_strict_mode(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed in this environment (the docs extra: pip install -e '.[docs]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT,  # the snippets' base path (ARCHITECTURE.md, benchmarks/README.md) is the repository root
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    architecture = (site / "architecture" / "index.html").read_text()
    assert "--8&lt;--" not in architecture and "--8<--" not in architecture
    assert "Where things plug in" in architecture  # ARCHITECTURE.md itself, included by pymdownx.snippets
    assert "A cheap baseline that ships" in (site / "benchmarks" / "index.html").read_text()
    reference = site / "reference"  # generated from the code at every build (docs/hooks/reference.py)
    assert "LORA_DROPOUT" in (reference / "parameters" / "index.html").read_text()
    assert "tunebook parameters" in (reference / "cli" / "index.html").read_text()
    assert "run folder name (default: run-&lt;timestamp&gt;)" in (reference / "cli" / "index.html").read_text()
    assert "output_schema" in (reference / "job-card" / "index.html").read_text()
    assert "console.log" in (reference / "run-folder" / "index.html").read_text()


def test_the_environment_reference_names_every_variable_the_package_reads():
    from tunebook.core.settings import ENVIRONMENT

    read = set()
    for path in PACKAGE.rglob("*.py"):
        read |= set(re.findall(r"\bTUNEBOOK_[A-Z_]+\b", path.read_text()))
    assert read == set(ENVIRONMENT)
