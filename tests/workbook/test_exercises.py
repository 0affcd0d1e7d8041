"""The workshop exercises: every exercise in the notebooks has a question, a solution and a check; every check accepts
its solution and rejects a wrong or missing answer on a real run; the learner notebooks are generated and current."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tunebook.core.runfolder import RunFolder
from tunebook.errors import TunebookError
from tunebook.workbook import exercises
from tunebook.workbook.runner import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
LEARNER_DIR = ROOT.joinpath(*exercises.LEARNER_DIR)

# An obviously wrong value per answer; a callable gets the solution's value and returns a wrong one (for answers
# whose right value depends on the run, such as a yes/no read from its artifacts).
WRONG: dict[str, Any] = {
    "answer_00_a": ("billing", "billing"),  # not a mistake at all
    "answer_00_b": True,
    "answer_00_c": True,
    "answer_01_a": -1,
    "answer_01_b": "more",
    "answer_01_c": "first",
    "answer_01_d": -1,
    "answer_02_a": "no such variant",
    "answer_02_b": "a",
    "answer_02_c": -1,
    "answer_03_a": lambda right: not right,
    "answer_03_b": 3,
    "answer_03_c": 2,
    "answer_04_a": lambda right: not right,
    "answer_04_b": -1,
    "answer_04_c": "wider",
    "answer_05_a": ["no_such_target"],
    "answer_05_b": ("no", "no_such_check"),  # wrong whether the gate passed (decision) or failed (reason)
    "answer_05_c": True,
    "answer_06_a": ["no_such_signal"],
    "answer_06_b": 1.0,
    "answer_06_c": "fewer",
}


@dataclass(frozen=True)
class Exercise:
    """One exercise as a notebook holds it: the solution cell, and the check cell after it."""

    notebook: str
    names: tuple[str, ...]  # the answers the solution cell assigns
    solution: str
    check: str  # the exercises function the check cell calls
    answer: str  # the answer it passes

    def __str__(self) -> str:
        return self.answer


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def check_call(code: str) -> tuple[str, str]:
    """The ``exercises.check_...(answer, ...)`` call of a check cell: (function, answer name)."""
    calls = [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "exercises"
        and node.func.attr.startswith("check_")
    ]
    assert len(calls) == 1, f"a check cell calls one exercises.check_...: {code!r}"
    assert isinstance(calls[0].args[0], ast.Name), f"the check's first argument is the answer: {code!r}"
    return calls[0].func.attr, calls[0].args[0].id


def discover(folder: Path = NOTEBOOK_DIR) -> list[Exercise]:
    """Every exercise in the notebooks: each cell tagged ``solution`` and the check cell that follows it."""
    found = []
    for name in NOTEBOOKS:
        book = cells(folder / f"{name}.ipynb")
        for i, cell in enumerate(book):
            if exercises.SOLUTION_TAG not in tags(cell):
                continue
            assert i + 1 < len(book) and book[i + 1]["cell_type"] == "code", (
                f"{name}: a check cell follows {cell['id']}"
            )
            names = tuple(n for node in ast.parse(source(cell)).body for n in exercises._answer_names(node))
            function, answer = check_call(source(book[i + 1]))
            found.append(Exercise(name, names, source(cell), function, answer))
    return found


EXERCISES = discover()


def solution_values(solution: str, run: RunFolder) -> dict[str, Any]:
    """The values a solution cell assigns: a literal as written, or an expression over ``run`` evaluated on it."""
    values = {}
    for node in ast.parse(solution).body:
        assert isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets), solution
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            value = eval(compile(ast.Expression(node.value), "<solution>", "eval"), {"run": run})
        values.update({target.id: value for target in node.targets})
    return values


def wrong_value(answer: str, right: Any) -> Any:
    wrong = WRONG[answer]
    return wrong(right) if callable(wrong) else wrong


# ---- the exercises as the notebooks hold them


def test_every_notebook_has_two_to_four_exercises_each_with_a_question_a_solution_and_a_check():
    per_notebook = {name: [e for e in EXERCISES if e.notebook == name] for name in NOTEBOOKS}
    assert all(2 <= len(found) <= 4 for found in per_notebook.values()), {k: len(v) for k, v in per_notebook.items()}
    for name in NOTEBOOKS:
        book = cells(NOTEBOOK_DIR / f"{name}.ipynb")
        first = next(i for i, c in enumerate(book) if c["cell_type"] == "markdown" and "## Exercises" in source(c))
        assert all(exercises.SOLUTION_TAG not in tags(c) for c in book[:first]), f"{name}: exercises come last"
        for i, cell in enumerate(book):
            if exercises.SOLUTION_TAG in tags(cell):
                question = book[i - 1]
                assert question["cell_type"] == "markdown" and exercises.EXERCISE_TAG in tags(question), cell["id"]
                assert book[i + 1]["outputs"] == [] and book[i + 1]["execution_count"] is None
    for exercise in EXERCISES:
        assert exercise.names == (exercise.answer,), f"{exercise}: the check takes the answer its solution assigns"
        assert exercise.answer.startswith(f"answer_{exercise.notebook[:2]}_")
        assert callable(getattr(exercises, exercise.check, None)), (
            f"{exercise.check} is not in tunebook.workbook.exercises"
        )


def test_every_check_is_used_once_and_every_answer_has_a_wrong_value():
    checks = sorted(name for name in dir(exercises) if name.startswith("check_"))
    assert sorted(e.check for e in EXERCISES) == checks, "each check_ function belongs to exactly one exercise"
    answers = [e.answer for e in EXERCISES]
    assert len(set(answers)) == len(answers)
    assert set(answers) == set(WRONG), "give every exercise an obviously wrong answer in WRONG (and only those)"


@pytest.mark.parametrize("exercise", EXERCISES, ids=str)
def test_an_unanswered_exercise_gets_its_hint_and_never_an_error(exercise, tmp_path):
    feedback = getattr(exercises, exercise.check)(..., tmp_path)
    assert not feedback.right and feedback.message.startswith("not answered yet: ")
    assert repr(feedback).startswith("✗ not answered yet: ")


@pytest.mark.parametrize("exercise", EXERCISES, ids=str)
def test_a_run_folder_without_the_step_says_so_instead_of_failing(exercise, tmp_path):
    wrong = WRONG[exercise.answer]
    feedback = getattr(exercises, exercise.check)(True if callable(wrong) else wrong, tmp_path)
    assert not feedback.right and "cannot check this yet" in feedback.message


def test_feedback_reads_right_or_not_yet():
    assert repr(exercises.Feedback(True, "42 rows")) == "✓ right: 42 rows"
    assert repr(exercises.Feedback(False, "count again")) == "✗ not yet: count again"
    assert exercises.Feedback(True, "x")._repr_markdown_() == "**✓ right:** x"
    assert "✗ not yet" in exercises.Feedback(False, "x")._repr_markdown_()


# ---- the learner notebooks


def test_the_learner_notebooks_in_the_repository_are_current():
    stale = exercises.learner_notebooks_out_of_date(NOTEBOOK_DIR, LEARNER_DIR)
    assert stale == [], (
        f"learner notebooks out of date: {', '.join(stale)}. Run `python -m tunebook.workbook.exercises` and commit "
        f"{LEARNER_DIR.relative_to(ROOT)}/."
    )


def test_learner_notebooks_differ_from_the_solutions_only_in_the_answers(tmp_path):
    written = exercises.write_learner_notebooks(NOTEBOOK_DIR, tmp_path / "a")
    again = exercises.write_learner_notebooks(NOTEBOOK_DIR, tmp_path / "b")
    assert [p.name for p in written] == [f"{name}.ipynb" for name in NOTEBOOKS]
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in again], "the same bytes every time"
    assert exercises.learner_notebooks_out_of_date(NOTEBOOK_DIR, tmp_path / "a") == []
    (tmp_path / "b" / written[0].name).unlink()
    (tmp_path / "b" / written[1].name).write_text("{}\n", encoding="utf-8")
    assert exercises.learner_notebooks_out_of_date(NOTEBOOK_DIR, tmp_path / "b") == [p.name for p in written[:2]]
    for path in written:
        solution = json.loads((NOTEBOOK_DIR / path.name).read_text(encoding="utf-8"))
        learner = json.loads(path.read_text(encoding="utf-8"))
        assert path.read_text(encoding="utf-8") == exercises.notebook_text(learner)
        assert len(learner["cells"]) == len(solution["cells"])
        for theirs, ours in zip(learner["cells"], solution["cells"]):
            if exercises.SOLUTION_TAG not in tags(ours):
                assert theirs == ours
                continue
            assert {k: v for k, v in theirs.items() if k != "source"} == {
                k: v for k, v in ours.items() if k != "source"
            }
            stubs = ast.parse(source(theirs)).body
            names = [n for node in ast.parse(source(ours)).body for n in exercises._answer_names(node)]
            assert [s.targets[0].id for s in stubs] == names
            assert all(isinstance(s.value, ast.Constant) and s.value.value is Ellipsis for s in stubs)


def test_a_stub_keeps_the_names_and_the_hint():
    solution = 'answer_01_a = "fewer"  # "more" or "fewer"\nanswer_01_b = (\n    1 + 2\n)  # a number\nanswer_01_c = 3'
    assert exercises.stub_source(solution).splitlines() == [
        'answer_01_a = ...  # your answer: "more" or "fewer"',
        "answer_01_b = ...  # your answer: a number",
        "answer_01_c = ...  # your answer",
    ]
    assert exercises.stub_source("x = 1  # your answer: a count") == "x = ...  # your answer: a count"
    with pytest.raises(TunebookError, match="only answer assignments"):
        exercises.stub_source("print(1)")


# ---- on a real run: the tiny model's workbook run


@pytest.mark.parametrize("exercise", EXERCISES, ids=str)
def test_every_check_accepts_its_solution_and_rejects_a_wrong_or_missing_answer(exercise, finished_run):
    run = RunFolder(finished_run[0])
    check = getattr(exercises, exercise.check)
    right = solution_values(exercise.solution, run)[exercise.answer]
    accepted = check(right, run)
    assert accepted.right, f"{exercise}: the solution {right!r} is refused: {accepted.message}"
    rejected = check(wrong_value(exercise.answer, right), run)
    assert not rejected.right and rejected.message, f"{exercise}: a wrong answer is accepted: {rejected.message}"
    assert not check(..., run).right


def test_the_solutions_pass_their_checks_in_the_executed_notebooks(finished_run):
    run = RunFolder(finished_run[0])
    shown = {}
    for path in run.notebooks():
        book = cells(path)
        for i, cell in enumerate(book):
            if exercises.SOLUTION_TAG in tags(cell):
                results = [o for o in book[i + 1]["outputs"] if o["output_type"] == "execute_result"]
                text = "".join(results[0]["data"]["text/plain"]) if results else "(no result shown)"
                shown[check_call(source(book[i + 1]))[1]] = text
    assert set(shown) == {e.answer for e in EXERCISES}, "every notebook ran, with all its exercises"
    failing = {answer: text for answer, text in shown.items() if not text.startswith("✓ right")}
    assert failing == {}
