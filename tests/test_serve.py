"""`tunebook predict`: the released champion on a file of inputs, without a notebook."""

import json

import pandas as pd
import pytest
import torch
from conftest import keyword_tickets, tol
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunebook import cli, registry, serve
from tunebook.errors import TunebookError


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
    from tunebook import decide

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
        "import sys, tunebook.serve; "
        "loaded = sorted(m for m in sys.modules if m in ('tunebook.train', 'tunebook.packing', 'tunebook.methods', "
        "'tunebook.callbacks', 'tunebook.release', 'tunebook.gate', 'tunebook.publish', 'trl', 'papermill')); "
        "print(loaded); assert not loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
