"""Running the notebook sequence with papermill into a new run folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from tunebook.core.artifacts import RunSummary
from tunebook.core.runfolder import NOTEBOOKS as NOTEBOOKS_IN_REGISTRY
from tunebook.core.runfolder import STEPS, RunFolder, Step
from tunebook.core.settings import RUNNER_PARAMETERS, Parameter, check_parameters
from tunebook.errors import TunebookError
from tunebook.registry.store import log_file, open_registry
from tunebook.workbook.bundle import workbook_root
from tunebook.workbook.parameters import declared_parameters

NOTEBOOKS = STEPS
KERNEL_NAME = "tunebook"


def notebooks_dir() -> Path:
    """The workbook's notebooks folder (``TUNEBOOK_NOTEBOOKS``, else the installed or checked-out ``notebooks/``)."""
    folder = Path(os.environ.get("TUNEBOOK_NOTEBOOKS", workbook_root() / "notebooks"))
    if not (folder / f"{Step.DEFINE}.ipynb").is_file():
        raise TunebookError(
            f"notebooks not found in {folder}; set TUNEBOOK_NOTEBOOKS to the workbook's notebooks folder."
        )
    return folder


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
    # deferred: Jupyter's libraries load only when notebooks run (`tunebook train` on a node needs none)
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    # deferred: as above
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="Python (tunebook)", prefix=sys.prefix)
    return KERNEL_NAME


def notebook_relative_defaults(declared: dict[str, Parameter], step: str, folder: Path) -> dict[str, str]:
    """The step's path defaults written relative to the notebooks folder (``../examples/...``), made absolute: in
    JupyterLab a notebook runs in that folder, under papermill inside the run folder."""
    found = {}
    for name, parameter in declared.items():
        value = parameter.notebook_default if step in parameter.notebooks and name not in RUNNER_PARAMETERS else None
        if isinstance(value, str) and value.startswith("../") and (folder / value).exists():
            found[name] = str((folder / value).resolve())
    return found


QUIET_KERNEL_MANAGER = "tunebook.workbook.kernels.QuietKernelManager"


@contextlib.contextmanager
def kernel_output_to(log: Path, heading: str) -> Iterator[TextIO]:
    """Send what a notebook's kernel and its subprocesses write to the terminal (they inherit this process's standard
    output and error: start-up warnings, third-party progress bars, the Trainer's dictionaries) to ``log`` instead,
    under ``heading``; yield a stream on the terminal's standard output for tunebook's own progress."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    with log.open("ab") as sink:
        sink.write(f"==== {heading}".encode())
        sink.flush()
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            console.close()


def cell_progress(step: str, console: TextIO) -> dict:
    """papermill's progress bar over a notebook's cells, on the terminal (none when it is not one)."""
    return {"desc": f"[tunebook] {step}", "file": console, "leave": False, "disable": not console.isatty()}


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
    # deferred: papermill loads only when notebooks run (`tunebook train` on a node needs none)
    import papermill
    from papermill.exceptions import PapermillExecutionError

    folder = folder or notebooks_dir()
    declared = declared_parameters()
    check_parameters(parameters, declared)
    kernel = ensure_kernel()
    run_dir = existing_run_dir(runs_dir, name, steps) if continue_run else new_run_dir(runs_dir, name)
    run = RunFolder(run_dir)
    if progress:
        print(f"[tunebook] run folder: {run_dir}", flush=True)
    timings, skipped, stopped = {}, {}, None
    for step in steps:
        skip = training_skipped(run) if step == Step.TRAIN else None
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
            with kernel_output_to(run.console_log, f"{step}\n") as console:
                papermill.execute_notebook(
                    str(folder / f"{step}.ipynb"),
                    str(output),
                    parameters=own,
                    kernel_name=kernel,
                    cwd=str(run_dir),
                    progress_bar=cell_progress(step, console) if progress else False,
                    log_output=False,
                    kernel_manager_class=QUIET_KERNEL_MANAGER,
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
        stopped = stop_reason(run) if step == Step.BASELINE else None
        if stopped:
            if progress:
                print(f"[tunebook] {stopped}", flush=True)
            break
    return run_dir, run.collect_summary(stopped, timings, skipped)


def stop_reason(run: RunFolder) -> str | None:
    """Why the run ends after the baseline (None: it goes on): only when no approach can be shown to work yet."""
    first = run.read_results(Step.DEFINE)
    if first.approach == "not-yet" and not first.force_training:
        return "the decision frame says no approach can be evaluated yet; stopped after the baseline"
    return None


def training_skipped(run: RunFolder) -> str | None:
    """Why 03 does not train in this run (None: it trains): the decision frame recommends against fine-tuning, or
    the best cheap baseline already meets the card's targets on validation. FORCE_TRAINING overrides either; the run
    then goes on to evaluate and release the baseline, as it would an adapter."""
    if not run.has_results(Step.BASELINE):
        return None
    first, baseline = run.read_results(Step.DEFINE), run.read_results(Step.BASELINE)
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
    info = run.read_registered() if notebook.stem == Step.MONITOR else None
    if info is None:
        return

    try:
        log_file(open_registry(info.tracking_uri), info.run_id, notebook, NOTEBOOKS_IN_REGISTRY)
    except Exception as error:  # the release itself is complete; only this copy of the notebook is missing
        print(
            f"[tunebook] warning: could not add {notebook.name} to tracking run {info.run_id} at {info.tracking_uri}: {error}",
            file=sys.stderr,
        )
