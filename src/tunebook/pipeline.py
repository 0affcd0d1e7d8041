"""Running the notebook sequence with papermill into a new run folder."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunebook.artifacts import RunSummary
from tunebook.errors import TunebookError, closest
from tunebook.runfolder import NOTEBOOKS as NOTEBOOKS_IN_REGISTRY
from tunebook.runfolder import STEPS, RunFolder

NOTEBOOKS = STEPS
BASELINE_STEP = STEPS[2]
TRAINING_STEP = STEPS[3]
KERNEL_NAME = "tunebook"
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
    run = RunFolder(Path(runs_dir) / name)
    if not run.job_card.is_file():
        raise TunebookError(
            f"{run.root} is not a run folder (no {run.relative(run.job_card)}); start one with `tunebook run`."
        )
    done = [step for step in steps if run.notebook(step).exists()]
    if done:
        raise TunebookError(
            f"{run.root} already holds {', '.join(done)}; runs are never overwritten. Continue with later steps only."
        )
    return run.root.resolve()


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


def notebook_relative_defaults(declared: dict[str, Parameter], step: str, folder: Path) -> dict[str, str]:
    """The step's path defaults written relative to the notebooks folder (``../examples/...``), made absolute: in
    JupyterLab a notebook runs in that folder, under papermill inside the run folder."""
    found = {}
    for name, parameter in declared.items():
        value = parameter.default_value if step in parameter.notebooks and name not in RUNNER_PARAMETERS else None
        if isinstance(value, str) and value.startswith("../") and (folder / value).exists():
            found[name] = str((folder / value).resolve())
    return found


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
) -> tuple[Path, RunSummary]:
    """Check the parameters, then execute the notebooks in order into a new ``runs_dir/name`` (or, with
    ``continue_run``, into that existing run folder, for steps that have not run there); return it and the summary."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    folder = folder or notebooks_dir()
    declared = declared_parameters(folder)
    check_parameters(parameters, declared)
    kernel = ensure_kernel()
    run_dir = existing_run_dir(runs_dir, name, steps) if continue_run else new_run_dir(runs_dir, name)
    run = RunFolder(run_dir)
    if progress:
        print(f"[tunebook] run folder: {run_dir}", flush=True)
    timings, skipped, stopped = {}, {}, None
    for step in steps:
        skip = training_skipped(run) if step == TRAINING_STEP else None
        if skip:
            skipped[step] = skip
            write_skipped_notebook(folder / f"{step}.ipynb", run.notebook(step), skip)
            if progress:
                print(f"[tunebook] {step} skipped: {skip}", flush=True)
            continue
        own = {
            **notebook_relative_defaults(declared, step, folder),
            **{k: v for k, v in parameters.items() if step in declared[k].notebooks},
        }
        own["RUN_DIR"] = str(run_dir)
        output = run.notebook(step)
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
        _attach_release_notebook(run, output)
        if progress:
            print(f"[tunebook] {step} done in {timings[step]:.0f} s", flush=True)
        stopped = stop_reason(run) if step == BASELINE_STEP else None
        if stopped:
            if progress:
                print(f"[tunebook] {stopped}", flush=True)
            break
    return run_dir, run.collect_summary(stopped, timings, skipped)


def stop_reason(run: RunFolder) -> str | None:
    """Why the run ends after the baseline (None: it goes on): only when no approach can be shown to work yet."""
    first = run.read_results(NOTEBOOKS[0])
    if first.approach == "not-yet" and not first.force_training:
        return "the decision frame says no approach can be evaluated yet; stopped after the baseline"
    return None


def training_skipped(run: RunFolder) -> str | None:
    """Why 03 does not train in this run (None: it trains): the decision frame recommends against fine-tuning, or
    the best cheap baseline already meets the card's targets on validation. FORCE_TRAINING overrides either; the run
    then goes on to evaluate and release the baseline, as it would an adapter."""
    if not run.has_results(BASELINE_STEP):
        return None
    first, baseline = run.read_results(NOTEBOOKS[0]), run.read_results(BASELINE_STEP)
    if first.force_training:
        return None
    variant = f"the best cheap baseline ({baseline.variant})"
    if not first.proceed_to_training:
        return (
            f"the decision frame recommends {first.approach}, not fine-tuning; {variant} is evaluated and released "
            "instead (FORCE_TRAINING=true trains anyway)"
        )
    if baseline.meets_targets:
        return (
            f"{variant} already meets every target on the card on validation, so fine-tuning is not warranted; it is "
            "evaluated and released instead (FORCE_TRAINING=true trains anyway; once this baseline is the champion, an "
            "adapter must beat it beyond chance to replace it)"
        )
    return None


def write_skipped_notebook(source: Path, output: Path, reason: str) -> Path:
    """The step's notebook, unexecuted, with a first cell saying why this run skipped it and how to run it anyway."""
    notebook = json.loads(source.read_text(encoding="utf-8"))
    note = {
        "cell_type": "markdown",
        "metadata": {"tags": ["skipped"]},
        "source": [
            f"**Skipped in this run:** {reason}.\n\n",
            "To train anyway, start a new run with `tunebook run -p FORCE_TRAINING=true` (or set it in 00's "
            "parameters); the release gate then asks the adapter to beat the baseline it would replace. Running this "
            "notebook by hand in JupyterLab trains in this run folder, and 04 then evaluates the adapter.",
        ],
    }
    notebook["cells"].insert(0, note)
    output.write_text(json.dumps(notebook, indent=1, ensure_ascii=False), encoding="utf-8")
    return output


def _attach_release_notebook(run: RunFolder, notebook: Path) -> None:
    """After 05_release registered a version, add its executed notebook to that version's tracking run."""
    info = run.read_registered() if notebook.stem == NOTEBOOKS[-1] else None
    if info is None:
        return
    from tunebook.registry import log_file, open_registry

    try:
        log_file(open_registry(info.tracking_uri), info.run_id, notebook, NOTEBOOKS_IN_REGISTRY)
    except Exception as error:  # the release itself is complete; only this copy of the notebook is missing
        print(
            f"[tunebook] warning: could not add {notebook.name} to tracking run {info.run_id} at {info.tracking_uri}: {error}",
            file=sys.stderr,
        )
