"""Step settings and the parameters each notebook declares: what a step function accepts, from a notebook or the CLI."""

from __future__ import annotations

import ast
import io
import json
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path

from tunebook.core.runfolder import STEPS, Step
from tunebook.errors import TunebookError, closest

NOTEBOOKS = STEPS
# Set by the runner for every notebook, never by the user.
RUNNER_PARAMETERS = ("RUN_DIR",)
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def notebooks_dir() -> Path:
    """The workbook's notebooks folder (``TUNEBOOK_NOTEBOOKS`` or the repository's ``notebooks/``)."""
    folder = Path(os.environ.get("TUNEBOOK_NOTEBOOKS", Path(__file__).resolve().parents[3] / "notebooks"))
    if not (folder / f"{Step.DEFINE}.ipynb").is_file():
        raise TunebookError(
            f"notebooks not found in {folder}; set TUNEBOOK_NOTEBOOKS to the workbook's notebooks folder."
        )
    return folder


@dataclass
class Parameter:
    """A notebook parameter as declared in its ``parameters`` cell."""

    name: str
    type_name: str
    default: str
    help: str
    notebooks: list[str]

    @property
    def default_value(self):
        """The default as a Python value (parameters cells hold plain literals)."""

        return ast.literal_eval(self.default)


def declared_parameters(folder: Path | None = None) -> dict[str, Parameter]:
    """Every parameter the notebooks declare, with the notebooks that use it."""
    folder = folder or notebooks_dir()
    found: dict[str, Parameter] = {}
    for name in NOTEBOOKS:
        for parameter in parameters_cell(folder / f"{name}.ipynb"):
            if parameter.name in found:
                found[parameter.name].notebooks.append(name)
            else:
                found[parameter.name] = parameter
    return found


def settings_from(cls: type, parameters: dict, aliases: dict[str, str] | None = None):
    """A step's settings dataclass from its notebook parameter names (each field's name in capitals, or an alias);
    other names are ignored, so a notebook's whole parameter set can be passed."""
    names = {f.upper(): f for f in cls.__dataclass_fields__} | (aliases or {})
    return cls(**{names[k]: v for k, v in parameters.items() if k in names})


class StepSettings:
    """Base of a step's settings dataclass, built once from the step's notebook parameters."""

    @classmethod
    def from_parameters(cls, parameters: dict):
        """Settings from the notebook's parameter names (each field's name in capitals); other names are ignored."""
        return settings_from(cls, parameters)

    def require_positive(self, *names: str) -> None:
        """Raise an error naming the first of these fields (by its parameter name) that is not positive."""
        for name in names:
            if getattr(self, name) <= 0:
                raise TunebookError(f"{name.upper()} must be positive, got {getattr(self, name)}.")


def step_parameters(step: str, namespace: dict, folder: Path | None = None) -> dict:
    """The values of the parameters ``step`` declares, taken from a notebook's namespace (``globals()``): what the
    notebook hands to the same package function the command line calls."""
    declared = parameters_cell((folder or notebooks_dir()) / f"{step}.ipynb")
    return {p.name: namespace[p.name] for p in declared if p.name not in RUNNER_PARAMETERS}


def parameters_cell(notebook: Path) -> list[Parameter]:
    """The ``NAME = literal  # help`` lines of a notebook's ``parameters`` cell (what papermill injects over).

    Read with ``ast`` rather than papermill, so that ``tunebook train`` on a training node needs no notebook runner.
    """

    cells = json.loads(notebook.read_text())["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise TunebookError(f"{notebook} has no cell tagged 'parameters'.")
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    comments = {
        t.start[0]: t.string.lstrip("#").strip()
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.COMMENT
    }
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, kind = node.target.id, ast.get_source_segment(source, node.annotation)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, kind = node.targets[0].id, type(ast.literal_eval(node.value)).__name__
        else:
            continue
        default = ast.get_source_segment(source, node.value)
        found.append(Parameter(name, kind, default, comments.get(node.end_lineno, ""), [notebook.stem]))
    return found


def check_parameters(given: dict, declared: dict[str, Parameter]) -> None:
    """Reject unknown names and values of the wrong type, naming the known parameters."""
    problems = []
    for key, value in given.items():
        if key in RUNNER_PARAMETERS:
            problems.append(f"{key} is set by `tunebook run` itself; use --runs-dir/--name instead")
        elif key not in declared:
            problems.append(f"unknown parameter {key}{closest(key, declared)}")
        else:
            expected = _TYPES.get(declared[key].type_name)
            wrong = expected is not None and (
                not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))
            )
            if wrong:
                problems.append(
                    f"{key} must be {declared[key].type_name} (default {declared[key].default}), got {value!r}"
                )
    if problems:
        known = ", ".join(sorted(k for k in declared if k not in RUNNER_PARAMETERS))
        raise TunebookError("bad parameters:\n  - " + "\n  - ".join(problems) + f"\nKnown parameters: {known}")
