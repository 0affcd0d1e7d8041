"""`tunebook predict`: the released champion on a file of inputs, without a notebook."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch
from conftest import free_port, keyword_tickets, tol, wait_until_serving
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunebook import cli
from tunebook.core.runfolder import MODEL_ARTIFACT, RunFolder
from tunebook.errors import TunebookError
from tunebook.registry import store as registry
from tunebook.serving import serve


def test_predict_uses_the_champion_on_a_file_of_inputs(released, tiny_model, tmp_path, capsys, monkeypatch):
    runs, _, _ = released
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    tickets = pd.DataFrame(keyword_tickets(2, seed=9, start=900))
    tickets[["id", "text"]].to_csv(tmp_path / "new.csv", index=False)
    where = ["--job", "support_triage", "--runs-dir", str(runs), "--base-model", tiny_model]
    output = tmp_path / "out" / "predictions.jsonl"
    assert cli.main(["predict", *where, "--input", str(tmp_path / "new.csv"), "--output", str(output)]) == 0
    assert "12 predictions by 'support_triage' version 1" in capsys.readouterr().out
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(tickets["id"]) and {r["model_version"] for r in rows} == {1}
    assert [r["prediction"] for r in rows] == list(tickets["label"])  # the champion learned the keywords
    assert all(0 < r["confidence"] <= 1 for r in rows)
    assert cli.main(["predict", *where, "--input", str(tmp_path / "new.csv"), "--output", str(output)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "predict",
                *where,
                "--version",
                "2",
                "--input",
                str(tmp_path / "new.csv"),
                "--output",
                str(tmp_path / "v2.jsonl"),
            ]
        )
        == 0
    )
    assert {json.loads(line)["model_version"] for line in (tmp_path / "v2.jsonl").read_text().splitlines()} == {2}


def test_a_release_reaches_the_cache_whole_even_with_three_fetches_at_once(released, tmp_path, monkeypatch):
    """Server workers or `tunebook predict`s started together on an empty cache: none sees a half-fetched release."""
    runs, _, _ = released
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    store = registry.open_registry(workspace=runs)
    final = RunFolder(tmp_path / "cache" / "released" / registry.champion(store, "support_triage").run_id)
    half_seen = []
    real = serve.download

    def watched(*args, **kwargs):
        complete = (final.root / MODEL_ARTIFACT / "MLmodel").is_file() and final.job_card.is_file()
        half_seen.append(final.root.exists() and not complete)
        return real(*args, **kwargs)

    monkeypatch.setattr(serve, "download", watched)
    with ThreadPoolExecutor(3) as pool:
        fetched = list(pool.map(lambda _: serve.fetch_release(store, "support_triage"), range(3)))
    assert half_seen and not any(half_seen)
    assert {release.root for _, release in fetched} == {final.root}
    assert [p.name for p in final.root.parent.iterdir()] == [final.root.name]  # no staging folder left behind
    assert (final.root / MODEL_ARTIFACT / "MLmodel").is_file()
    # A folder an older, interrupted fetch left is replaced, not trusted.
    shutil.rmtree(final.root)
    final.job_card.parent.mkdir(parents=True)
    final.job_card.write_text("name: left by an interrupted fetch\n")
    serve.fetch_release(store, "support_triage")
    assert "support_triage" in final.job_card.read_text() and (final.root / MODEL_ARTIFACT / "MLmodel").is_file()
    assert [p.name for p in final.root.parent.iterdir()] == [final.root.name]
    # A fetch that fails half-way leaves nothing behind.
    shutil.rmtree(final.root)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("the registry went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(serve, "download", failing)
    with pytest.raises(OSError, match="went away"):
        serve.fetch_release(store, "support_triage")
    assert list(final.root.parent.iterdir()) == []


def test_predict_refuses_another_base_model_naming_both(released, tiny_model, tmp_path):
    runs, _, _ = released
    other = tmp_path / "other-model"
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.02)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(other)
    pd.DataFrame({"text": ["my invoice is wrong"]}).to_csv(tmp_path / "in.csv", index=False)
    store = registry.open_registry(workspace=runs)
    with pytest.raises(TunebookError, match="trained on base model '.*' \\(sha256 .*but BASE_MODEL is 'other-model'"):
        serve.predict_file(store, "support_triage", tmp_path / "in.csv", tmp_path / "out.jsonl", str(other))


def test_inputs_without_the_text_column_or_with_empty_text_are_refused(released, tiny_model, tmp_path):
    runs, _, _ = released
    store = registry.open_registry(workspace=runs)
    pd.DataFrame({"body": ["hello"]}).to_csv(tmp_path / "wrong.csv", index=False)
    with pytest.raises(TunebookError, match="wrong.csv: no 'text' column.*columns: body"):
        serve.predict_file(store, "support_triage", tmp_path / "wrong.csv", tmp_path / "a.jsonl", tiny_model)
    (tmp_path / "blank.csv").write_text("id,text\nA1,fine\nA2,\nA3,  \n")
    with pytest.raises(TunebookError, match="blank.csv: rows 2, 3 have an empty 'text'"):
        serve.predict_file(store, "support_triage", tmp_path / "blank.csv", tmp_path / "b.jsonl", tiny_model)


def test_a_job_without_a_champion_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "in.csv").write_text("text\nhello\n")
    code = cli.main(
        [
            "predict",
            "--job",
            "nobody",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--input",
            str(tmp_path / "in.csv"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "'nobody' has no champion" in err and "05_release" in err


def test_predict_applies_the_released_decision_rule_exactly_as_evaluated(released, tiny_model, tmp_path, monkeypatch):
    from tunebook.modeling import decision_rule as decide

    runs, (good_dir, _), _ = released
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    test = pd.read_json(good_dir / "data" / "test.jsonl", lines=True, dtype={"id": str})
    test[["id", "text"]].to_csv(tmp_path / "test.csv", index=False)
    store = registry.open_registry(workspace=runs)
    served = serve.predict_file(
        store, "support_triage", tmp_path / "test.csv", tmp_path / "out.jsonl", tiny_model, version=1, progress=False
    )
    evaluated = pd.read_json(good_dir / "evaluation" / "predictions.jsonl", lines=True, dtype={"id": str})
    assert served["id"].tolist() == evaluated["id"].tolist()
    assert served["prediction"].tolist() == evaluated["prediction"].tolist()
    assert served["confidence"].to_numpy() == pytest.approx(evaluated["confidence"].to_numpy(), abs=tol(1e-5, 1e-3))
    fitted = decide.load_rule(good_dir / "evaluation" / "decision_rule.json")
    released_rule = decide.load_rule(next((tmp_path / "cache" / "released").glob("*/evaluation/decision_rule.json")))
    assert released_rule == fitted and fitted.fitted_on["split"] == "validation"


def test_serving_imports_no_training_or_release_code():
    import subprocess
    import sys

    code = (
        "import sys, tunebook.serving.serve; "
        "loaded = sorted(m for m in sys.modules if m in ('tunebook.train.step', 'tunebook.train.packing', 'tunebook.train.methods', "
        "'tunebook.train.callbacks', 'tunebook.release.serving_checks', 'tunebook.release.gate', 'tunebook.release.publish', 'trl', 'papermill')); "
        "print(loaded); assert not loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def _tickets(tmp_path, n: int, seed: int):
    tickets = pd.DataFrame(keyword_tickets(n, seed=seed, start=700))[["id", "text", "label"]]
    tickets[["id", "text"]].to_csv(tmp_path / "tickets.csv", index=False)
    return tickets


def test_a_released_version_is_an_mlflow_pyfunc_model_that_answers_like_tunebook_predict(
    released, tiny_model, tmp_path, monkeypatch
):
    import mlflow.pyfunc

    runs, _, _ = released
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    store = registry.open_registry(workspace=runs)
    tickets = _tickets(tmp_path, 2, seed=4)
    expected = serve.predict_file(
        store, "support_triage", tmp_path / "tickets.csv", tmp_path / "out.jsonl", tiny_model, progress=False
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    model = mlflow.pyfunc.load_model("models:/support_triage@champion", model_config={"base_model": tiny_model})
    answered = model.predict(tickets[["id", "text"]])
    pd.testing.assert_frame_equal(answered.reset_index(drop=True), expected.reset_index(drop=True))
    assert answered["model_version"].tolist() == [1] * len(tickets)
    assert answered["prediction"].tolist() == tickets["label"].tolist()
    one = model.predict(pd.DataFrame({"text": [tickets["text"][0]]}))  # one request, one row, no id: row number
    assert one["id"].tolist() == ["1"] and one["prediction"][0] == expected["prediction"][0]
    assert one["confidence"][0] == pytest.approx(expected["confidence"][0], abs=tol(1e-5, 1e-3))
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="no 'text' column") as bad:
        model.predict(pd.DataFrame({"body": ["hello"]}))
    assert bad.value.get_http_status_code() == 400


def test_a_trained_model_mixed_with_the_classical_one_is_served_as_04_answers(released, tiny_model, tmp_path):
    """The mixed system: a copy of the good run whose decision rule mixes in the classical model, answered by its
    served form (the MLflow model folder, loaded through MLflow) exactly as 04's code path answers it."""
    import mlflow.pyfunc

    from tunebook.baseline import variants as baselines
    from tunebook.evaluate import step as evaluation
    from tunebook.modeling import decision_rule as decide
    from tunebook.modeling import predict, system
    from tunebook.serving import pyfunc

    _, (good_dir, _), _ = released
    run = RunFolder(tmp_path / "mixed")
    shutil.copytree(good_dir, run.root)
    val, test = run.read_splits()["val"], run.read_splits()["test"]
    tuned = evaluation.load_tuned(run, tiny_model)
    classical = baselines.load_classical(run)
    card, texts = run.read_job_card(), val["text"].tolist()
    probs = predict.choose(tuned.model, tuned.tokenizer, card, texts, 8, False)[1]
    truth = [baselines.choice_of(card, t) for t in val["target"]]
    rule = decide.fit_rule(card, probs, truth, classical.predict_proba(texts), "classical")
    rule = rule.model_copy(update={"mix_weight": 0.5, "mix_with": "classical"})  # mixed whatever the fit chose
    as_evaluated = predict.predict(
        tuned.model, tuned.tokenizer, card, test, 8, False, rule=rule, other_model=classical
    )
    spec = system.adopt_trained(run, rule, tuned.answer_budget, "test: a mixed system")
    assert spec.kind == "mixed" and run.system_classical.is_file()
    folder = pyfunc.save_model(run, tmp_path / "model", "support_triage", "7", tiny_model)
    pyfunc.refuse_pickled(folder, "7")
    served = mlflow.pyfunc.load_model(str(folder)).predict(test[["id", "text"]])
    assert served["prediction"].tolist() == as_evaluated["prediction"].tolist()
    assert served["confidence"].to_numpy() == pytest.approx(as_evaluated["confidence"].to_numpy(), abs=tol(1e-5, 1e-3))
    assert not list(folder.rglob("*.pkl")) and not list(folder.rglob("*.joblib"))


def test_the_prompt_prefix_cache_gives_the_answers_of_a_full_pass(small_job, tiny_model):
    from tunebook.card import schema as job
    from tunebook.data import examples as data
    from tunebook.modeling import decoding, predict

    card = job.load_job_card(small_job)
    texts = data.load_examples(card)[0]["text"].head(5).tolist()
    model, tokenizer = predict.load_for_inference(tiny_model)
    prefix = decoding.PromptPrefix(model, tokenizer, card)
    assert len(prefix.tokens) > decoding.MIN_SHARED_PREFIX and prefix.covers(model, [prefix.tokens + [1]])
    for batch in ([texts[0]], texts):  # one request alone (no prefix shared before), and a batch
        plain = decoding.label_log_likelihoods(model, tokenizer, card, batch, progress=False)
        cached = decoding.label_log_likelihoods(model, tokenizer, card, batch, progress=False, prefix=prefix)
        assert cached == pytest.approx(plain, abs=tol(1e-4, 0.05))
    other, _ = predict.load_for_inference(tiny_model)
    assert not prefix.covers(other, [prefix.tokens + [1]])  # a cache belongs to the model that computed it


def test_mlflow_models_serve_answers_over_http_like_tunebook_predict_and_logs_every_answer(
    released, tiny_model, tmp_path, monkeypatch
):
    import os
    import subprocess
    import sys
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from tunebook.serving import inference_log

    runs, _, _ = released
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    store = registry.open_registry(workspace=runs)
    tickets = _tickets(tmp_path, 3, seed=6)
    expected = serve.predict_file(
        store, "support_triage", tmp_path / "tickets.csv", tmp_path / "out.jsonl", tiny_model, progress=False
    )
    port, log = free_port(), tmp_path / "served" / "log.jsonl"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # mlflow execs uvicorn
        "MLFLOW_TRACKING_URI": store.uri,
        "TUNEBOOK_BASE_MODEL": tiny_model,
        "TUNEBOOK_INFERENCE_LOG": str(log),
        "TUNEBOOK_LOG_TEXT": "hash",
        "OMP_NUM_THREADS": "1",
    }
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/support_triage@champion"]
    server = subprocess.Popen(
        [*mlflow_cli, "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(server, url, 240)

        def post(rows: list[dict]) -> list[dict]:
            body = json.dumps({"dataframe_records": rows}).encode()
            request = urllib.request.Request(
                f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=120) as reply:
                return json.loads(reply.read())["predictions"]

        records = tickets[["id", "text"]].to_dict("records")
        answered = pd.DataFrame(post(records))
        assert answered["id"].tolist() == expected["id"].tolist()
        assert answered["prediction"].tolist() == expected["prediction"].tolist()
        assert answered["confidence"].to_numpy() == pytest.approx(expected["confidence"].to_numpy(), abs=1e-6)
        with ThreadPoolExecutor(6) as pool:  # both workers append at once, one request per ticket
            singles = list(pool.map(lambda row: post([row]), records * 2))
        assert [s[0]["prediction"] for s in singles] == expected["prediction"].tolist() * 2
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    logged, problems = inference_log.read_log(log)
    assert problems == [] and len(logged) == 3 * len(records)
    assert sorted(logged["id"]) == sorted([r["id"] for r in records] * 3)
    assert logged["text"].isna().all() and set(logged["text_sha256"]) == {
        inference_log.text_hash(t) for t in tickets["text"]
    }
    assert set(logged["model_version"]) == {"1"} and (logged["latency_ms"] > 0).all()
    assert set(logged["decision"]) <= {"most likely", "routed"}


def test_concurrent_appends_lose_no_line_and_a_bad_line_is_named_by_number(tmp_path):
    from multiprocessing import get_context

    from tunebook.serving import inference_log

    log = tmp_path / "log.jsonl"
    with get_context("spawn").Pool(4) as pool:
        pool.starmap(_append_many, [(str(log), worker) for worker in range(4)])
    with log.open("a") as handle:
        handle.write('{"time": "now", "job": "x"\n')  # cut off mid-line
        handle.write(json.dumps({"time": "now", "job": "x"}) + "\n")  # fields missing
    frame, problems = inference_log.read_log(log)
    assert len(frame) == 4 * 200 and frame.groupby("model_version").size().tolist() == [200] * 4
    assert len(problems) == 2 and "line 801" in problems[0] and "line 802" in problems[1]
    assert "model_version" in problems[1]


def _append_many(path: str, worker: int) -> None:
    from tunebook.serving import inference_log

    answers = pd.DataFrame({"id": [f"{worker}-{i}" for i in range(10)], "prediction": "billing", "confidence": 0.9})
    for _ in range(20):
        records = inference_log.log_records("job", str(worker), answers, ["some text " * 40] * 10, 12.5)
        inference_log.append(path, records)
