"""The notebooks as files: stripped outputs, a plain-literal parameters cell first, teaching markdown."""

import ast
from pathlib import Path

import nbformat
import papermill
import pytest

from tunebook.workbook.runner import KERNEL_NAME, NOTEBOOKS

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
PATHS = [NOTEBOOK_DIR / f"{name}.ipynb" for name in NOTEBOOKS]


def test_the_seven_notebooks_exist_and_nothing_else():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == [p.name for p in PATHS]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs (nbstripout)"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_structure(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    assert book.metadata.kernelspec.name == KERNEL_NAME
    assert book.cells[0].cell_type == "markdown" and book.cells[0].source.startswith(f"# {path.stem[:2]} ·")
    for heading in (
        "**What you will do:**",
        "**What you need:**",
        "**What you will learn:**",
        "*Time on a 2-core laptop:",
    ):
        assert heading in book.cells[0].source
    code = [c for c in book.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert sum(c.cell_type == "markdown" for c in book.cells) >= 2


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_parameters_cell_holds_plain_literals_with_comments(path):
    book = nbformat.read(path, as_version=4)
    source = next(c for c in book.cells if c.cell_type == "code").source
    tree = ast.parse(source)
    names = []
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign), f"{path.name}: only `NAME: type = literal` lines in parameters"
        ast.literal_eval(node.value)
        names.append(node.target.id)
    for line in source.splitlines():
        assert "  # " in line, f"{path.name}: every parameter needs a comment: {line}"
    assert "RUN_DIR" in names
    assert set(papermill.inspect_notebook(str(path))) == set(names), "papermill must parse every parameter"


def test_each_parameter_the_workshop_profile_changes_names_its_value_in_every_notebook_that_declares_it():
    import json

    import yaml

    from tunebook.workbook import workshop
    from tunebook.workbook.parameters import declared_parameters

    profile = yaml.safe_load(workshop.profile_path().read_text())
    declared = declared_parameters()
    assert set(profile) <= set(declared), "the profile sets only parameters the notebooks declare"
    for name, value in profile.items():
        for step in declared[name].notebooks:
            book = nbformat.read(NOTEBOOK_DIR / f"{step}.ipynb", as_version=4)
            cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
            line = next(li for li in cell.source.splitlines() if li.startswith(f"{name}:"))
            assert line.endswith(f"; workshop profile: {json.dumps(value)}"), f"{step}: {line}"
    for path in sorted(NOTEBOOK_DIR.glob("0*.ipynb")):  # and no notebook names a value the profile does not set
        cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        named = [li.split(":")[0] for li in cell.source.splitlines() if "; workshop profile: " in li]
        assert set(named) <= set(profile), f"{path.name} names a workshop value for {set(named) - set(profile)}"
