"""The workbook's own files (notebooks, bundled examples, workshop kit): where they are and copying them out."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunebook.errors import TunebookError

PARTS = ("notebooks", "examples", "workshop")
# An installed wheel carries them here (pyproject's force-include); a source checkout keeps them at its root.
BUNDLED = Path(__file__).resolve().parent / "bundled"
CHECKOUT = Path(__file__).resolve().parents[3]


def workbook_root() -> Path:
    """The folder holding ``notebooks/``, ``examples/`` and ``workshop/``: the wheel's copy, else the checkout's."""
    return BUNDLED if (BUNDLED / "notebooks").is_dir() else CHECKOUT


def copy_workbook(into: str | Path) -> Path:
    """Copy the notebooks, examples and workshop kit into the new folder ``into`` (to open and edit); return it."""
    into = Path(into)
    if into.exists() and any(into.iterdir()):
        raise TunebookError(f"{into} is not empty; the workbook is copied into a new or empty folder.")
    root = workbook_root()
    for part in PARTS:
        shutil.copytree(root / part, into / part, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    return into.resolve()
