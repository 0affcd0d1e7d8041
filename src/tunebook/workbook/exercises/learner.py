"""The learner notebooks: the solution notebooks with each solution replaced by ``answer_NN_x = ...`` and its hint."""

from __future__ import annotations

import argparse
import ast
import io
import json
import tokenize
from pathlib import Path

from tunebook.errors import TunebookError
from tunebook.workbook.runner import notebooks_dir

SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"
LEARNER_DIR = ("workshop", "learner")  # under the repository root, beside notebooks/


def _answer_names(node: ast.stmt) -> list[str]:
    """The names an assignment in a solution cell binds."""
    if not isinstance(node, ast.Assign):
        return []
    names = []
    for target in node.targets:
        elements = target.elts if isinstance(target, ast.Tuple) else [target]
        names += [e.id for e in elements if isinstance(e, ast.Name)]
    return names


def stub_source(solution: str, where: str = "a solution cell") -> str:
    """A solution cell's source as the learner sees it: each answer name assigned ``...`` with the line's hint."""
    tree = ast.parse(solution)
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(solution).readline)
        if token.type == tokenize.COMMENT
    }
    lines = []
    for node in tree.body:
        names = _answer_names(node)
        if not names:
            raise TunebookError(f"{where}: a solution cell holds only answer assignments, found line {node.lineno}.")
        hint = comments.get(node.end_lineno) or comments.get(node.lineno) or ""
        if hint and not hint.startswith("your answer"):
            hint = f"your answer: {hint}"
        lines += [f"{name} = ...  # {hint or 'your answer'}" for name in names]
    if not lines:
        raise TunebookError(f"{where}: a solution cell must assign at least one answer.")
    return "\n".join(lines)


def learner_notebook(notebook: dict, name: str = "notebook") -> dict:
    """The learner's copy of a solution notebook: every ``solution`` cell's source replaced by its stub."""
    copy = json.loads(json.dumps(notebook))
    for cell in copy["cells"]:
        if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = stub_source(source, f"{name}, cell {cell.get('id')}").splitlines(keepends=True)
    return copy


def notebook_text(notebook: dict) -> str:
    """A notebook as the repository stores it: indented, sorted keys, unicode as is, a trailing newline."""
    return json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def _rendered(source_dir: Path) -> dict[str, str]:
    """Each learner notebook's text, by file name."""
    paths = sorted(Path(source_dir).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise TunebookError(f"no notebooks NN_*.ipynb in {source_dir}.")
    return {p.name: notebook_text(learner_notebook(json.loads(p.read_text(encoding="utf-8")), p.name)) for p in paths}


def write_learner_notebooks(source_dir: str | Path, dest_dir: str | Path) -> list[Path]:
    """Write the learner notebooks for the solution notebooks in ``source_dir`` into ``dest_dir``."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in _rendered(Path(source_dir)).items():
        (dest / name).write_bytes(text.encode("utf-8"))  # the same bytes on every platform
        written.append(dest / name)
    return written


def learner_notebooks_out_of_date(source_dir: str | Path, dest_dir: str | Path) -> list[str]:
    """Names of the learner notebooks in ``dest_dir`` that are missing or differ from what would be written now."""
    dest = Path(dest_dir)
    return [
        name
        for name, text in _rendered(Path(source_dir)).items()
        if not (dest / name).is_file() or (dest / name).read_bytes() != text.encode("utf-8")
    ]


def default_dirs() -> tuple[Path, Path]:
    """The solution notebooks (``notebooks/``) and the learner notebooks' folder (``workshop/learner/``)."""

    source = notebooks_dir()
    return source, source.parent.joinpath(*LEARNER_DIR)


def main(argv: list[str] | None = None) -> int:
    """``python -m tunebook.workbook.exercises [--check]``: write the learner notebooks, or say whether they are current."""
    parser = argparse.ArgumentParser(prog="python -m tunebook.workbook.exercises", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any is out of date")
    args = parser.parse_args(argv)
    source, dest = default_dirs()
    if args.check:
        stale = learner_notebooks_out_of_date(source, dest)
        print(f"out of date in {dest}: {', '.join(stale)}" if stale else f"learner notebooks in {dest} are current")
        return 1 if stale else 0
    for path in write_learner_notebooks(source, dest):
        print(path)
    return 0
