"""The wheel carries the workbook: built from this checkout, installed into a clean virtual environment in an empty
folder, its `tunebook run` runs the first notebooks on the bundled example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tunebook.errors import TunebookError
from tunebook.workbook import bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built without network (hatchling comes with the test extra)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
    )
    (found,) = out.glob("tunebook-*.whl")
    return found


def _tracked(folder: str) -> set[str]:
    listed = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(listed.stdout.split())


def test_the_wheel_carries_every_notebook_example_and_workshop_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in bundle.PARTS:
        tracked = _tracked(part)
        assert tracked, f"git lists nothing under {part}/"
        missing = {f for f in tracked if f"tunebook/workbook/bundled/{f}" not in names}
        assert not missing, f"the wheel lacks {sorted(missing)[:5]}"
    assert {"tunebook/py.typed", "tunebook/resources/general_probe.jsonl"} <= names
    assert not [n for n in names if ".ipynb_checkpoints" in n or "__pycache__" in n]


def test_a_checkout_finds_its_own_workbook_and_copies_it_out(tmp_path):
    assert bundle.workbook_root() == ROOT  # editable install: no bundled copy inside src/
    into = bundle.copy_workbook(tmp_path / "mine")
    assert sorted(p.name for p in into.iterdir()) == sorted(bundle.PARTS)
    assert (into / "examples" / "support_triage" / "job.yaml").is_file()
    with pytest.raises(TunebookError, match="not empty"):
        bundle.copy_workbook(into)


@pytest.mark.workbook
def test_the_installed_wheel_runs_the_first_notebooks_from_an_empty_folder(wheel, tmp_path, tiny_model):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # the dependencies come from the indexes pip is configured with (its cache after `make setup`)
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tiny.yaml").write_text(yaml.safe_dump({"BASE_MODEL": tiny_model}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEBOOK_") and k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "from tunebook.workbook.bundle import workbook_root; print(workbook_root())"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    command = [str(venv / "bin" / "tunebook"), "run", "--steps", "00,01,02", "--name", "w", "--config", "tiny.yaml"]
    done = subprocess.run(command, cwd=empty, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[tunebook] baseline: On validation" in done.stdout
    summary = json.loads((empty / "runs" / "w" / "summary.json").read_text())
    assert list(summary["results"]) == ["00_define_the_job", "01_clean_the_data", "02_prove_the_baseline"]
    card = yaml.safe_load((empty / "runs" / "w" / "job.yaml").read_text())
    assert card["name"] == yaml.safe_load((ROOT / "examples" / "support_triage" / "job.yaml").read_text())["name"]
