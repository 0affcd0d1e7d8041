"""The package's layers, as pyproject.toml's import-linter contracts declare them: kept by the code, broken by a
planted upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the package under ``root`` (its own source, not the installed one)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        capture_output=True,
        text=True,
    )


def test_the_layers_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "chain"),
    [
        ("core/runfolder.py", "from tunebook.release import gate", "tunebook.core.runfolder -> tunebook.release.gate"),
        ("clean/step.py", "from tunebook.monitor import feedback", "tunebook.clean.step -> tunebook.monitor.feedback"),
        ("card/schema.py", "from tunebook.card.tasks import task_of", "tunebook.card.schema -> tunebook.card.tasks"),
    ],
)
def test_an_upward_import_breaks_a_contract(tmp_path, module, planted, chain):
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "src/tunebook" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "1 kept, 1 broken" in result.stdout and chain in result.stdout
