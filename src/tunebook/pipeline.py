"""Running the notebook sequence with papermill into a new run folder."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunebook.errors import TunebookError, closest

NOTEBOOKS = (
    "00_define_the_job",
    "01_clean_the_data",
    "02_prove_the_baseline",
    "03_train_qlora",
    "04_evaluate",
    "05_release",
)
BASELINE_STEP = "02_prove_the_baseline"
KERNEL_NAME = "tunebook"
RESULTS = "results"
# Set by the runner for every notebook, never by the user.
RUNNER_PARAMETERS = ("RUN_DIR",)
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def notebooks_dir() -> Path:
    """The workbook's notebooks folder (``TUNEBOOK_NOTEBOOKS`` or the repository's ``notebooks/``)."""
    folder = Path(os.environ.get("TUNEBOOK_NOTEBOOKS", Path(__file__).resolve().parents[2] / "notebooks"))
    if not (folder / f"{NOTEBOOKS[0]}.ipynb").is_file():
        raise TunebookError(
            f"notebooks not found in {folder}; set TUNEBOOK_NOTEBOOKS to the workbook's notebooks folder."
        )
    return folder


def save_results(run_dir: str | Path, step: str, results: dict) -> Path:
    """Record a notebook's headline results as JSON in ``<run>/results/<step>.json``."""
    folder = Path(run_dir) / RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{step}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    return path


def load_results(run_dir: str | Path, step: str) -> dict:
    """Read what a notebook recorded with ``save_results``."""
    path = Path(run_dir) / RESULTS / f"{step}.json"
    if not path.is_file():
        raise TunebookError(f"{path} is missing: run notebook {step} for this run folder first.")
    return json.loads(path.read_text())


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
        import ast

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


def parameters_cell(notebook: Path) -> list[Parameter]:
    """The ``NAME = literal  # help`` lines of a notebook's ``parameters`` cell (what papermill injects over).

    Read with ``ast`` rather than papermill, so that ``tunebook train`` on a training node needs no notebook runner.
    """
    import ast
    import io
    import tokenize

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


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create ``runs_dir/name``; refuse if it exists, since a run never overwrites another."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise TunebookError(f"run name '{name}' may contain only letters, digits, '.', '_' and '-'.")
    run_dir = Path(runs_dir) / name
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise TunebookError(
            f"run folder {run_dir} already exists; runs are never overwritten. Pick another --name."
        ) from None
    return run_dir.resolve()


def existing_run_dir(runs_dir: str | Path, name: str, steps: tuple[str, ...]) -> Path:
    """An existing run folder to continue with ``steps``; refuse if one of them already ran there."""
    run_dir = Path(runs_dir) / name
    if not (run_dir / "job.yaml").is_file():
        raise TunebookError(f"{run_dir} is not a run folder (no job.yaml); start one with `tunebook run`.")
    done = [step for step in steps if (run_dir / f"{step}.ipynb").exists()]
    if done:
        raise TunebookError(
            f"{run_dir} already holds {', '.join(done)}; runs are never overwritten. Continue with later steps only."
        )
    return run_dir.resolve()


def ensure_kernel() -> str:
    """Register the 'tunebook' Jupyter kernel for this Python if it is missing; return its name."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="Python (tunebook)", prefix=sys.prefix)
    return KERNEL_NAME


class NotebookFailed(TunebookError):
    """A notebook raised; the partly executed notebook is in the run folder."""


def run_workbook(
    parameters: dict,
    runs_dir: str | Path,
    name: str,
    steps: tuple[str, ...] = NOTEBOOKS,
    folder: Path | None = None,
    progress: bool = True,
    continue_run: bool = False,
) -> tuple[Path, dict]:
    """Check the parameters, then execute the notebooks in order into a new ``runs_dir/name`` (or, with
    ``continue_run``, into that existing run folder, for steps that have not run there); return it and the summary."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    folder = folder or notebooks_dir()
    declared = declared_parameters(folder)
    check_parameters(parameters, declared)
    kernel = ensure_kernel()
    run_dir = existing_run_dir(runs_dir, name, steps) if continue_run else new_run_dir(runs_dir, name)
    if progress:
        print(f"[tunebook] run folder: {run_dir}", flush=True)
    timings = {}
    for step in steps:
        own = {k: v for k, v in parameters.items() if step in declared[k].notebooks}
        own["RUN_DIR"] = str(run_dir)
        output = run_dir / f"{step}.ipynb"
        started = time.perf_counter()
        if progress:
            print(f"[tunebook] {step} ...", flush=True)
        try:
            papermill.execute_notebook(
                str(folder / f"{step}.ipynb"),
                str(output),
                parameters=own,
                kernel_name=kernel,
                cwd=str(run_dir),
                progress_bar=False,
                log_output=False,
            )
        except PapermillExecutionError as error:
            raise NotebookFailed(
                f"notebook {step} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                f"The partly executed notebook, with the failing cell, is {output}"
            ) from None
        timings[step] = round(time.perf_counter() - started, 1)
        _attach_release_notebook(run_dir, output)
        if progress:
            print(f"[tunebook] {step} done in {timings[step]:.0f} s", flush=True)
        stopped = stop_reason(run_dir) if step == BASELINE_STEP else None
        if stopped:
            if progress:
                print(f"[tunebook] {stopped}", flush=True)
            break
    else:
        stopped = None
    summary = summarise(run_dir)
    summary["stopped"] = stopped
    summary["seconds_per_notebook"] = timings
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir, summary


def stop_reason(run_dir: Path) -> str | None:
    """Why the run ends after the baseline (None: it goes on to training). FORCE_TRAINING overrides either reason."""
    first, baseline = load_results(run_dir, NOTEBOOKS[0]), load_results(run_dir, BASELINE_STEP)
    if first.get("force_training"):
        return None
    if not first["proceed_to_training"]:
        return "the decision frame recommends against fine-tuning; stopped after the baseline (FORCE_TRAINING=true overrides)"
    if baseline.get("meets_targets"):
        return (
            f"the best cheap baseline ({baseline['variant']}) already meets every target on the card, so fine-tuning is not "
            "warranted; stopped after the baseline (FORCE_TRAINING=true overrides)"
        )
    return None


def _attach_release_notebook(run_dir: Path, notebook: Path) -> None:
    """After 05_release registered a version, add its executed notebook to that version's tracking run."""
    registered = run_dir / "release" / "registered.json"
    if not registered.is_file() or notebook.stem != NOTEBOOKS[-1]:
        return
    from tunebook.registry import log_file, open_registry

    info = json.loads(registered.read_text())
    try:
        log_file(open_registry(info["tracking_uri"]), info["run_id"], notebook, "notebooks")
    except Exception as error:  # the release itself is complete; only this copy of the notebook is missing
        print(
            f"[tunebook] warning: could not add {notebook.name} to tracking run {info['run_id']} at {info['tracking_uri']}: {error}",
            file=sys.stderr,
        )


def summarise(run_dir: Path) -> dict:
    """Collect every notebook's recorded results into one mapping."""
    folder = run_dir / RESULTS
    return (
        {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    )
