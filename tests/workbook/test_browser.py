"""The learner's path in JupyterLab, in a real browser: notebooks 00, 01 and 04 opened in JupyterLab in headless
Chromium (driven by Playwright), every cell run from the Run menu, and each widget used as a learner would, with
assertions on the files it writes. `make test` installs Playwright and Debian's Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port

from tunebook.card.schema import load_job_card

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TUNEBOOK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: `make test` installs it")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no Chromium: `make test` installs Debian's (apt-get install chromium)"
    ),
]
# Chromium as root in a container, with no network: the flags keep it from dialling out at every start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_ALL_SECONDS = 600


def _prepare(workspace: Path, notebook: str, parameters: dict) -> None:
    """Copy a notebook into the learner's folder with its parameters set, as a learner edits the parameters cell."""
    import papermill

    papermill.execute_notebook(
        str(ROOT / "notebooks" / notebook),
        str(workspace / "notebooks" / notebook),
        parameters=parameters,
        prepare_only=True,
        progress_bar=False,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_model):
    """JupyterLab serving a learner's copy of the workbook (notebooks/ beside examples/), on a free localhost port.
    00 is the shipped notebook as it is; 01 uses the tiny model's tokenizer. Returns (workspace folder, base URL)."""
    workspace = tmp_path_factory.mktemp("learner")
    shutil.copytree(ROOT / "examples", workspace / "examples")
    (workspace / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "00_define_the_job.ipynb", workspace / "notebooks")
    _prepare(workspace, "01_clean_the_data.ipynb", {"BASE_MODEL": tiny_model})
    port = free_port()
    settings = tmp_path_factory.mktemp("lab-settings")
    # every cell attached to the page, so that the test reads the prompts and outputs of cells out of view
    tracker = settings / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(settings / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(settings / "runtime"),
    }
    log = open(settings / "lab.log", "w")  # noqa: SIM115 (closed after the server stops)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            f"--ServerApp.root_dir={workspace}",
            "--allow-root",  # CI runs as root in a container
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                log.close()
                pytest.fail(f"JupyterLab did not start:\n{(settings / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    try:
        yield workspace, url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium, driven by Playwright."""
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    """A fresh browser page, closed after the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def _open(page, url: str, notebook: str) -> None:
    """Open a notebook in JupyterLab and wait until its kernel is idle."""
    page.goto(f"{url}/lab/tree/notebooks/{notebook}?reset")  # reset: only this notebook open
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    try:  # JupyterLab may ask which kernel to start; the notebook's own (Python (tunebook)) is preselected
        dialog.wait_for(timeout=5_000)
        assert "Python (tunebook)" in dialog.locator("select").evaluate("s => s.options[s.selectedIndex].text")
        dialog.locator("button", has_text=re.compile(r"^Select$")).click()
    except playwright.TimeoutError:
        pass
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"^Python \(tunebook\) \| Idle$")).wait_for(timeout=120_000)


def _run_all(page) -> None:
    """Run every cell from the Run menu, as a learner does, and wait until each has run; fail on a traceback, or
    when the kernel went idle with cells left unrun (a failed cell stops the rest)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline, stalled = time.monotonic() + RUN_ALL_SECONDS, 0
    while time.monotonic() < deadline:
        time.sleep(1)
        prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]
        errors = [text for text in page.locator(".jp-OutputArea-output").all_inner_texts() if "Traceback" in text]
        if errors:
            pytest.fail(f"a cell failed in the browser:\n{errors[0][-3000:]}")
        if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
            return
        idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0
        stalled = stalled + 1 if idle and not any("*" in p for p in prompts) else 0
        if stalled >= 10:
            break
    shot = Path(os.environ.get("TMPDIR", "/tmp")) / f"tunebook-browser-{int(time.time())}.png"
    page.screenshot(path=str(shot), full_page=True)
    pytest.fail(f"the cells did not all run (prompts {prompts}); screenshot {shot}")


def _widget(page, description: str, kind: str = "input"):
    """The input of an ipywidget found by its description label."""
    return page.locator(f".widget-inline-hbox:has(label:text-is('{description}')) {kind}").first


def test_00_the_job_card_form_writes_a_card_that_the_notebook_can_use(lab, page):
    workspace, url = lab
    _open(page, url, "00_define_the_job.ipynb")
    _run_all(page)
    form_path = workspace / "runs" / "lab" / "job_from_form.yaml"
    assert not form_path.exists()

    _widget(page, "name").fill("my_triage")
    _widget(page, "task", "textarea").fill("Route each support ticket to the team that should answer it.")
    card = yaml.safe_load((workspace / "examples" / "support_triage" / "job.yaml").read_text())
    labels = "\n".join(f"{label['name']}: {label['definition']}" for label in card["labels"])
    _widget(page, "labels", "textarea").fill(labels)
    save = page.locator("button", has_text="Validate and save")

    # A typo in the data file: the form says so and writes nothing.
    _widget(page, "data file").fill("../examples/support_triage/tickets_typo.csv")
    save.click()
    page.get_by_text("tickets_typo.csv").last.wait_for()
    assert not form_path.exists()

    # Typed relative to the notebook, the way the parameters cell writes paths.
    _widget(page, "data file").fill("../examples/support_triage/tickets.csv")
    page.locator(".widget-checkbox", has_text="repeat often enough").first.locator("input").check()
    save.click()
    page.get_by_text(re.compile(r"set JOB_CARD = ")).wait_for()
    saved = load_job_card(form_path)
    assert saved.name == "my_triage"
    assert saved.label_names == [label["name"] for label in card["labels"]]
    assert Path(saved.data.path) == (workspace / "examples" / "support_triage" / "tickets.csv").resolve()
    assert str(form_path.resolve()) in page.locator(".widget-output", has_text="set JOB_CARD").inner_text()


def test_01_the_review_browser_saves_each_decision_for_the_item_shown(lab, page):
    workspace, url = lab
    if not (workspace / "runs" / "lab" / "job.yaml").exists():
        pytest.skip("needs the run folder that the 00 test writes")
    _open(page, url, "01_clean_the_data.ipynb")
    _run_all(page)
    decisions_path = workspace / "runs" / "lab" / "review_decisions.yaml"
    view = page.locator(".widget-html", has_text=re.compile(r"\d+ / \d+ ·")).last
    status = page.locator(".widget-html").last

    def shown() -> tuple[str, str]:
        text = view.inner_text()
        return re.search(r"id (\S+)", text).group(1), re.search(r"target: (\S+)", text).group(1)

    page.get_by_text(re.compile(r"^1 / \d+ ·")).wait_for()
    first_id, first_label = shown()
    new_label = _widget(page, "new label", "select")
    assert new_label.input_value() == first_label  # starts on the item's own label

    page.locator("button", has_text=re.compile(r"^relabel$")).click()
    page.get_by_text("Nothing saved").wait_for()
    assert not decisions_path.exists()

    other = next(o for o in new_label.locator("option").all_inner_texts() if o != first_label)
    new_label.select_option(other)
    page.locator("button", has_text=re.compile(r"^relabel$")).click()
    page.get_by_text(f"for id {first_id}").wait_for()
    page.get_by_text(re.compile(r"^2 / \d+ ·")).wait_for()
    second_id, second_label = shown()
    assert new_label.input_value() == second_label  # the next item's own label, not the last choice
    page.locator("button", has_text=re.compile(r"^drop$")).click()
    page.get_by_text(f"for id {second_id}").wait_for()
    assert f"saved drop for id {second_id}" in status.inner_text()

    by_id = {entry["id"]: entry for entry in yaml.safe_load(decisions_path.read_text())}
    assert by_id[first_id] == {"id": first_id, "action": "relabel", "target": other}
    assert by_id[second_id]["action"] == "drop"


def test_04_runs_on_a_trained_run_and_the_mistake_browser_pages_through_the_flips(lab, page, finished_run, tiny_model):
    workspace, url = lab
    run_dir = workspace / "runs" / "trained"
    shutil.copytree(finished_run[0], run_dir)
    evaluation = run_dir / "results" / "04_evaluate.json"
    evaluation.unlink()
    # The learner's edit of the parameters cell: this run folder, and the base model it was trained on.
    _prepare(
        workspace, "04_evaluate.ipynb", {"RUN_DIR": str(run_dir), "BASE_MODEL": tiny_model, "BOOTSTRAP_RESAMPLES": 50}
    )
    _open(page, url, "04_evaluate.ipynb")
    _run_all(page)
    assert evaluation.exists()

    from tunebook.core.runfolder import RunFolder

    mcnemar = RunFolder(run_dir).read_comparison().mcnemar
    flipped = mcnemar.fixed + mcnemar.broken
    if flipped == 0:  # nothing to page through: the browser says so
        page.get_by_text("Nothing to show.").wait_for()
        return
    view = page.locator(".widget-html", has_text=re.compile(rf"\d+ / {flipped} · id")).last
    first = view.inner_text()
    assert first.startswith(f"1 / {flipped} · id")
    page.locator("button", has_text="next ▶").last.click()
    page.get_by_text(re.compile(rf"^{2 if flipped > 1 else 1} / {flipped} · id")).wait_for()
    if flipped > 1:
        assert view.inner_text() != first
