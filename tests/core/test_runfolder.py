"""The run folder as a contract: every artifact path lives in one module, and every artifact is validated on read."""

import ast
import inspect
import json
from pathlib import Path

import pytest
from conftest import ROOT
from pydantic import ValidationError

from tunebook.core import artifacts
from tunebook.core.runfolder import STEP_RESULTS, STEPS, RunFolder, Step
from tunebook.errors import TunebookError

PACKAGE = ROOT / "src" / "tunebook"
OWNERS = {"core/runfolder.py", "core/artifacts.py"}
# Names that are not run-folder paths where they appear: the bundled example's own job card in the repository.
# the bundled example's card (a repository file, not a run folder's): 00's declared default, which `tunebook run` uses
# the embedding model's folder inside its own wheel, not a released version's MLflow model folder
ALLOWED = {
    "define/settings.py": ["../examples/support_triage/job.yaml"],
    "knowledge/retrievers/dense.py": ["/ 'model'"],
}


def artifact_names() -> set[str]:
    """Every folder and file name a run folder uses, collected from RunFolder itself."""
    run = RunFolder(Path("/run"))
    paths = []
    for name, member in inspect.getmembers(RunFolder):
        if isinstance(member, property):
            paths.append(getattr(run, name))
    paths += [run.results_file(Step.DEFINE), run.split_file("train"), run.variant_rule("retrieval 3-shot")]
    paths += [run.variant_predictions("trivial", "val"), run.variant_model("classical"), run.notebook(Step.DEFINE)]
    paths += [run.baseline_scores("prompting"), run.baseline_predictions("prompting"), run.baseline_scores()]
    paths += [run.baseline_predictions(), run.figure("loss_curve")]
    names = {part for p in paths if p.is_relative_to(run.root) for part in p.relative_to(run.root).parts}
    return names - {"loss_curve.png", "00_define_the_job.ipynb", "train.jsonl"} | {"tunebook_manifest.json"}


NAMES = artifact_names()
FILE_NAMES = {n for n in NAMES if "." in n}
FOLDER_NAMES = NAMES - FILE_NAMES


def spelled_paths(tree: ast.AST) -> list[str]:
    """String literals in ``tree`` that spell an artifact file name, or an artifact folder joined onto a path."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(node.value == n or node.value.endswith("/" + n) for n in FILE_NAMES):
                found.append(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in FOLDER_NAMES | FILE_NAMES:
                    found.append(f"/ {side.value!r}")
    return found


def notebook_code(path: Path) -> str:
    """A notebook's code after its parameters cell (whose defaults are the user's inputs, such as a job card)."""
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", [])]
    return "\n".join("".join(c["source"]) for c in code)


def test_the_names_it_checks_are_the_run_folders_own():
    assert {"job.yaml", "dataset_version.json", "metrics.json", "comparison.json", "gate.json"} <= FILE_NAMES
    assert {"data", "baseline", "adapter", "evaluation", "release", "results"} <= FOLDER_NAMES


MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))


def test_the_path_check_covers_every_folder_of_the_package():
    assert len(MODULES) > 80 and {m.split("/")[0] for m in MODULES} >= {"card", "core", "modeling", "release"}


@pytest.mark.parametrize("module", [m for m in MODULES if m not in OWNERS])
def test_no_module_spells_an_artifact_path(module):
    assert spelled_paths(ast.parse((PACKAGE / module).read_text())) == ALLOWED.get(module, [])


@pytest.mark.parametrize("notebook", STEPS)
def test_no_notebook_spells_an_artifact_path_or_reads_json_itself(notebook):
    code = notebook_code(ROOT / "notebooks" / f"{notebook}.ipynb")
    tree = ast.parse(code)
    assert spelled_paths(tree) == []
    joins = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)]
    assert joins == [], "paths come from the RunFolder, not from joining names in a notebook"
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "json" not in imported, "artifacts are read and written through the RunFolder's typed methods"


def test_the_checker_catches_a_spelled_path():
    tree = ast.parse('x = run_dir / "evaluation" / "comparison.json"\ny = "baseline/metrics.json"')
    assert set(spelled_paths(tree)) == {
        "comparison.json",
        "/ 'evaluation'",
        "/ 'comparison.json'",
        "baseline/metrics.json",
    }


def test_every_step_records_its_own_results_type(tmp_path):
    run = RunFolder(tmp_path)
    assert set(STEP_RESULTS) == set(STEPS)
    results = artifacts.JobResults(
        job="j", task_kind="classification", job_card_sha256="a", approach="fine-tuning", proceed_to_training=True,
        forced=False, force_training=False,
    )  # fmt: skip
    with pytest.raises(TunebookError, match="results of step 01_clean_the_data must be CleanResults"):
        run.write_results(Step.CLEAN, results)
    run.write_results(Step.DEFINE, results)
    assert run.read_results(Step.DEFINE) == results
    # a misspelt field fails where the results are built, not in a later step that reads them
    with pytest.raises(ValidationError, match="jbo"):
        artifacts.JobResults(jbo="j", **results.model_dump(exclude={"job"}))


def test_a_malformed_artifact_names_the_file_the_field_and_the_step(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(TunebookError, match=r"dataset_version.json is missing: run 01_clean_the_data"):
        run.read_dataset_version()
    run.data_dir.mkdir()
    run.dataset_version.write_text(json.dumps({"hash": "abc", "splits": {}, "rows_before": "many"}))
    with pytest.raises(TunebookError) as caught:
        run.read_dataset_version()
    message = str(caught.value)
    assert str(run.dataset_version) in message and "DatasetVersion" in message
    assert "rows_before" in message and "source: Field required" in message and "Re-run 01_clean_the_data" in message
    run.dataset_version.write_text("{not json")
    with pytest.raises(TunebookError, match="is not valid JSON"):
        run.read_dataset_version()


def test_an_artifact_from_a_newer_schema_is_refused_and_an_unversioned_one_reads_as_version_1(tmp_path):
    run = RunFolder(tmp_path)
    results = artifacts.JobResults(
        job="j", task_kind="classification", job_card_sha256="a", approach="prompting", proceed_to_training=False,
        forced=False, force_training=False,
    )  # fmt: skip
    path = run.write_results(Step.DEFINE, results)
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in raw.items() if k != "schema_version"}))
    assert run.read_results(Step.DEFINE).schema_version == 1
    path.write_text(json.dumps({**raw, "schema_version": 2}))
    with pytest.raises(TunebookError, match="schema version 2, but this tunebook reads up to version 1"):
        run.read_results(Step.DEFINE)


def test_records_are_never_overwritten(tmp_path):
    run = RunFolder(tmp_path)
    registered = artifacts.Registered(
        version="1", promoted=True, previous_champion=None, run_id="r", tracking_uri="sqlite:///x", model="m"
    )
    run.write_registered(registered)
    assert run.read_registered() == registered
    with pytest.raises(TunebookError, match="never overwritten"):
        run.write_registered(registered)


def test_a_step_is_its_notebook_name_everywhere():
    assert [str(step) for step in Step] == list(STEPS)
    assert STEP_RESULTS[Step.RELEASE] is STEP_RESULTS["05_release"] and f"{Step.TRAIN}.ipynb" == "03_train_qlora.ipynb"
    assert {Step.EVALUATE: 1}["04_evaluate"] == 1 and json.dumps(Step.MONITOR) == '"06_monitor"'
