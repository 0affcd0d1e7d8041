"""The workshop kit's package side: the workshop profile (parameters that keep every notebook short on a laptop)
and catch-up checkpoints (a run folder as it stands before a notebook, built by the workbook itself)."""

from __future__ import annotations

from pathlib import Path

from tunebook.core.runfolder import Step
from tunebook.errors import TunebookError
from tunebook.workbook.bundle import workbook_root
from tunebook.workbook.runner import NOTEBOOKS, run_workbook


def profile_path() -> Path:
    """The workshop profile shipped with the workbook (``workshop/profile.yaml``)."""
    return workbook_root() / "workshop" / "profile.yaml"


def steps_before(step: str) -> tuple[str, ...]:
    """The notebooks that run before ``step`` (a prefix such as '03' or a notebook name)."""
    matches = [n for n in NOTEBOOKS if n.startswith(step.strip())]
    if len(matches) != 1:
        raise TunebookError(f"checkpoint {step!r}: name one notebook of {', '.join(NOTEBOOKS)}, e.g. 03.")
    index = NOTEBOOKS.index(matches[0])
    if index == 0:
        raise TunebookError(f"nothing runs before {Step.DEFINE}: open it with RUN_DIR set to a new folder.")
    return NOTEBOOKS[:index]


def build_checkpoint(step: str, into: str | Path, parameters: dict, progress: bool = True) -> Path:
    """A new run folder ``into`` as it stands before notebook ``step``: the notebooks before it, run by the workbook
    with ``parameters`` (the workshop profile's, unless told otherwise); returns the folder."""

    into = Path(into)
    if into.exists():
        raise TunebookError(f"{into} exists; a checkpoint is built into a new folder. Choose another --into.")
    run_dir, _ = run_workbook(parameters, into.parent, into.name, steps_before(step), progress=progress)
    return run_dir
