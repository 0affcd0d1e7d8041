"""Whatever wins ships: each kind of system (trivial, classical, prompted, retrieval-prompted) evaluated by 04,
released by 05, served with 04's answers, rolled back; a tampered classical model is refused; bad HTTP requests get
a 400 that names the row and field."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port, keyword_job, wait_until_serving

from tunebook.core.runfolder import RunFolder
from tunebook.errors import TunebookError
from tunebook.evaluate import step as evaluation
from tunebook.modeling.system import json_answers
from tunebook.registry import register as registration
from tunebook.registry import store as registry
from tunebook.release import step as releasing
from tunebook.serving import serve
from tunebook.workbook import runner as pipeline

JOB = "support_triage"
KINDS = {"classical": "classical", "zero-shot": "prompted", "1-shot": "prompted", "retrieval 1-shot": "retrieval"}


@pytest.fixture(scope="session")
def systems(tmp_path_factory, tiny_model):
    """00-02 once on learnable keyword tickets; then each cheap variant made the run's system in its own copy of the
    run folder (the test's way to have every kind win once), evaluated and released into one registry: classical
    first (champion), the others forced to champion one by one and rolled back. Returns (runs, store, releases)
    where releases maps a variant to (run folder, version, 04's answers, served answers, served after rollback)."""
    root = tmp_path_factory.mktemp("systems")
    card, test = keyword_job(root / "job")
    params = {"JOB_CARD": str(card), "TEST_FILE": str(test), "BASE_MODEL": tiny_model, "K_SHOTS": 1}
    params |= {"BOOTSTRAP_RESAMPLES": 50, "PARITY_EXAMPLES": 8, "LATENCY_EXAMPLES": 3, "TRAIN_SAMPLE": 0}
    runs = root / "runs"
    base_dir, _ = pipeline.run_workbook(params, runs, "base", steps=pipeline.NOTEBOOKS[:3], progress=False)
    store = registry.open_registry(workspace=runs)
    releases = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNEBOOK_CACHE", str(root / "cache"))
        for variant in KINDS:
            releases[variant] = _release_as(variant, base_dir, runs, root, store, params, tiny_model, releases)
    return runs, store, releases


def _release_as(variant, base_dir, runs, root, store, params, tiny_model, releases) -> tuple:
    """``variant`` made the system of a copy of the run folder, evaluated, released, served, and rolled back."""
    folder = runs / variant.replace(" ", "_")
    shutil.copytree(base_dir, folder)
    run = RunFolder(folder)
    variants = run.read_variants()
    run.write_variants(variants.model_copy(update={"best": variant}))
    evaluation.evaluate_run_folder(folder, params)
    released = releasing.release_run_folder(folder, params)
    if not released.promoted:
        registration.promote(store, JOB, released.version, force=True, reason="test: every kind serves once")
    evaluated = run.read_predictions(run.tuned_predictions)
    inputs = root / f"{folder.name}.csv"
    evaluated[["id", "text"]].to_csv(inputs, index=False)
    served = serve.predict_file(store, JOB, inputs, root / f"{folder.name}.jsonl", tiny_model, progress=False)
    after = None
    if variant != "classical":
        registration.rollback(store, JOB)
        after = serve.load_released(store, JOB, base_model=tiny_model).answer(evaluated[["id", "text"]])
    return run, released.version, evaluated, served, after


@pytest.mark.parametrize("variant", list(KINDS))
def test_every_kind_of_system_is_released_served_as_evaluated_and_rolled_back(systems, variant):
    _, store, releases = systems
    run, version, evaluated, served, after = releases[variant]
    system = run.read_system()
    assert system.kind == KINDS[variant] and system.variant == variant and not system.trained
    assert system.needs_language_model == (KINDS[variant] != "classical")
    assert served["model_version"].astype(str).unique().tolist() == [version]
    assert served["prediction"].tolist() == evaluated["prediction"].tolist()
    assert served["confidence"].to_numpy() == pytest.approx(evaluated["confidence"].to_numpy(), abs=1e-6)
    summary = run.read_results("05_release")
    assert summary.system_kind == KINDS[variant] and summary.system_variant == variant
    tags = registry.get_version(store, JOB, version).tags
    assert tags[registry.TAG + "system_kind"] == KINDS[variant] and tags[registry.TAG + "system_trained"] == "false"
    card_text = run.model_card.read_text()
    assert "## What ships" in card_text and "No weights were trained for this version." in card_text
    gate = run.read_gate()
    regression = next(c for c in gate.checks if c.check == "general_regression")
    assert regression.passed and "trains no weights" in regression.detail
    if after is not None:  # rolled back to the classical champion, which answers as it was evaluated
        classical = releases["classical"][2]
        assert after["model_version"].unique().tolist() == [int(releases["classical"][1])]
        assert after["prediction"].tolist() == classical["prediction"].tolist()


def test_the_classical_system_was_chosen_on_validation_and_answers_without_a_language_model(
    systems, tmp_path, monkeypatch
):
    runs, _, releases = systems
    run = releases["classical"][0]
    assert run.read_results("02_prove_the_baseline").variant == "classical"
    assert (run.system_classical).is_file() and not list(run.root.rglob("*.joblib"))
    gate = run.read_gate()
    assert gate.passed and "the best baseline, classical" in gate.reference
    assert run.read_results("05_release").parity_agreement == 1.0
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    answerer = serve.load_released(registry.open_registry(workspace=runs), JOB, releases["classical"][1])
    assert answerer.system.model is None and "torch" not in _imported_by_a_classical_load(runs, releases)


def _imported_by_a_classical_load(runs: Path, releases: dict) -> str:
    """The modules a fresh process imports to load and answer with the classical release: torch must not be one."""
    code = (
        "import sys, pandas as pd; from tunebook.registry import store as registry; from tunebook.serving import serve; "
        f"a = serve.load_released(registry.open_registry(workspace={str(runs)!r}), {JOB!r}, {releases['classical'][1]!r}); "
        "a.answer(pd.DataFrame({'text': ['my parcel never came']})); "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_tampered_classical_model_in_the_registry_is_refused_not_loaded(systems, tmp_path, monkeypatch):
    runs, store, releases = systems
    version = registry.get_version(store, JOB, releases["classical"][1])
    artifacts = Path(version.source.replace("file://", ""))
    stored = next(artifacts.rglob("classical.npz"))
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    original = stored.read_bytes()
    stored.write_bytes(pickle.dumps(Payload()))
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    try:
        with pytest.raises(Exception) as refused:
            serve.load_released(store, JOB, releases["classical"][1])
    finally:
        stored.write_bytes(original)
    assert "may be a pickle" in str(refused.value) and "can run code" in str(refused.value)
    assert not marker.exists()


def test_a_release_stored_the_old_way_is_refused_naming_the_fix(systems, tmp_path, monkeypatch):
    from tunebook.modeling.system import load_system

    run = releases_run = systems[2]["classical"][0]
    old = RunFolder(tmp_path / "old")
    shutil.copytree(releases_run.root, old.root)
    old.system_classical.unlink()
    with pytest.raises(TunebookError, match="stored another way .* pickle"):
        load_system(old)
    assert run.system_classical.is_file()


def test_json_answers_come_back_as_objects_and_others_as_they_are():
    from tunebook.card.schema import load_job_card

    examples = Path(__file__).resolve().parents[2] / "examples"
    extraction = load_job_card(examples / "order_extraction" / "job.yaml")
    triage = load_job_card(examples / "support_triage" / "job.yaml")
    answers = pd.Series(['{"order_id": "A1", "quantity": 2}', "not json"])
    parsed = json_answers(extraction, answers)
    assert parsed.iloc[0] == {"order_id": "A1", "quantity": 2} and parsed.iloc[1] == "not json"
    assert json_answers(triage, pd.Series(["billing"])).tolist() == ["billing"]


def test_tunebook_serve_answers_over_http_and_bad_requests_get_a_400_without_a_stack_trace(
    systems, tmp_path, monkeypatch
):
    runs, store, releases = systems
    evaluated = releases["classical"][2]
    port = free_port()
    # the README's command, as written: the console script of this environment, no PATH set up by hand
    command = [str(Path(sys.executable).parent / "tunebook"), "serve", "--job", JOB, "--runs-dir", str(runs)]
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = "/usr/bin:/bin"  # uvicorn is not on it: `tunebook serve` must find it itself
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def post(body) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    try:
        wait_until_serving(server, url, 120)
        status, good = post({"dataframe_records": evaluated[["id", "text"]].to_dict("records")})
        assert status == 200 and [p["prediction"] for p in good["predictions"]] == evaluated["prediction"].tolist()
        rows = [{"id": "a", "text": "my invoice is wrong"}, {"id": "b", "text": "  "}]
        for body, named in (
            ({"dataframe_records": rows}, ["rows 2", "empty 'text'"]),
            ({"dataframe_records": [{"id": "a", "message": "hello"}]}, ["no 'text' column", "columns: id, message"]),
        ):
            status, reply = post(body)
            text = json.dumps(reply)
            assert status == 400 and reply["error_code"] == "INVALID_PARAMETER_VALUE", reply
            assert all(part in reply["message"] for part in named), reply["message"]
            assert "Traceback" not in text and "stack_trace" not in reply and ".py" not in text
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def test_an_extraction_answer_is_served_as_a_json_object(tmp_path):
    from conftest import write_job

    from tunebook.card.schema import load_job_card
    from tunebook.core.artifacts import System
    from tunebook.serving.pyfunc import Answerer

    card = load_job_card(write_job(tmp_path / "job", per_label=2, example="order_extraction"))
    run = RunFolder(tmp_path / "release")
    run.write_job_card(card)
    answer = '{"order_id": null, "quantity": 1}'
    spec = System(kind="trivial", variant="trivial", needs_language_model=False, trained=False, trivial_answer=answer)
    run.write_system(spec)
    answered = Answerer(run, card.name, "3", None).answer(pd.DataFrame({"text": ["two mugs please", "hello"]}))
    assert answered["prediction"].tolist() == [{"order_id": None, "quantity": 1}] * 2
    assert answered["model_version"].tolist() == [3, 3]
