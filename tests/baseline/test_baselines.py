"""The cheap baselines: trivial answers, retrieval, the classical model, every variant on the tiny model, and the choice
made on validation only."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, keyword_job, write_job

from tunebook.baseline import variants as baselines
from tunebook.card import schema as job
from tunebook.core.runfolder import RunFolder
from tunebook.data import examples as data
from tunebook.modeling import classical, predict
from tunebook.scoring import metrics
from tunebook.workbook import runner as pipeline


def frame(rows):
    return pd.DataFrame([{"id": str(i), "text": t, "target": y, "tags": ""} for i, (t, y) in enumerate(rows)])


def card_of(example):
    return job.load_job_card(ROOT / "examples" / example / "job.yaml")


def test_trivial_answers_for_every_task_kind():
    triage = card_of("support_triage")
    train = frame([("a", "billing"), ("b", "billing"), ("c", "escalate")])
    assert baselines.trivial_answer(triage, train) == "billing"
    tools = card_of("support_tools")
    call = json.dumps({"tool": "track_parcel", "arguments": {"tracking_number": "X1"}})
    other = json.dumps({"tool": "reset_password", "arguments": {}})
    assert baselines.trivial_answer(tools, frame([("a", call), ("b", call), ("c", other)])) == call
    extraction = card_of("order_extraction")
    fields = list(extraction.output_schema["properties"])
    records = [
        {f: None for f in fields} | {fields[0]: "A"},
        {f: None for f in fields} | {fields[0]: "B"},
        {f: None for f in fields} | {fields[0]: "A"},
    ]
    answer = json.loads(
        baselines.trivial_answer(extraction, frame([(str(i), json.dumps(r)) for i, r in enumerate(records)]))
    )
    assert answer == {f: None for f in fields} | {fields[0]: "A"} and list(answer) == fields
    drafting = card_of("reply_drafting")
    replies = frame(
        [
            ("a", "Thanks for your message, we will refund you."),
            ("b", "Thanks for your message, we will check."),
            ("c", "Completely different words here"),
        ]
    )
    assert baselines.trivial_answer(drafting, replies).startswith("Thanks for your message")


def test_trivial_predictions_carry_training_shares_as_probabilities():
    triage = card_of("support_triage")
    train = frame([("a", "billing"), ("b", "billing"), ("c", "escalate"), ("d", "technical")])
    out = baselines.trivial_predictions(triage, train, frame([("x", "account")]))
    assert out["prediction"].tolist() == ["billing"] and out["p_billing"].iloc[0] == pytest.approx(0.5)
    assert baselines.probabilities(triage, out).sum() == pytest.approx(1.0)


def test_retriever_puts_the_nearest_training_example_last():
    train = frame(
        [
            ("my parcel never arrived at the door", "shipping"),
            ("the app crashes on start", "technical"),
            ("refund my invoice please", "billing"),
        ]
    )
    shots = classical.Retriever(train).shots(["parcel did not arrive", "app crashes"], 2)
    assert shots[0][-1] == ("my parcel never arrived at the door", "shipping")
    assert shots[1][-1] == ("the app crashes on start", "technical") and len(shots[1]) == 2
    assert classical.Retriever(train).shots(["x"], 0) == [[]]


def test_classical_model_chooses_its_setting_by_cross_validation_on_train():
    triage = card_of("support_triage")
    from conftest import keyword_tickets

    rows = keyword_tickets(16, seed=3)
    train = pd.DataFrame(rows).rename(columns={"label": "target"})
    model = classical.fit_classical(triage, train)
    assert model.cv["C"] in classical.CLASSICAL_C and model.cv["folds"] == 5 and 0.5 < model.cv["cv_macro_f1"] <= 1
    probs = model.predict_proba(["my invoice is wrong, refund", "the lawyer says fraud"])
    assert probs.shape == (2, 6) and np.allclose(probs.sum(axis=1), 1)
    assert [triage.choices[i] for i in probs.argmax(axis=1)] == ["billing", "escalate"]
    with pytest.raises(Exception, match="fixed set of answers"):
        classical.fit_classical(card_of("order_extraction"), train)


def _run(name, val_right, test_right):
    card = card_of("support_triage")
    val = frame([("v", "billing")]).assign(prediction="billing" if val_right else "technical")
    test = frame([("t", "billing")]).assign(prediction="billing" if test_right else "technical")
    return baselines.VariantRun(name, "prompting", val, test, 1.0), card


def test_the_best_variant_is_chosen_on_validation_never_on_test():
    good_on_val, card = _run("a", val_right=True, test_right=False)
    good_on_test, _ = _run("b", val_right=False, test_right=True)
    assert baselines.best_variant([good_on_test, good_on_val], card).name == "a"


@pytest.mark.parametrize("example", ["support_triage", "support_tools", "order_extraction", "reply_drafting"])
def test_every_variant_runs_on_the_tiny_model(example, tiny_model, tmp_path):
    card = job.load_job_card(write_job(tmp_path / "job", per_label=3, example=example))
    examples, _ = data.load_examples(card)
    examples = examples.sample(frac=1.0, random_state=0).reset_index(drop=True)
    n = len(examples)
    splits = {"train": examples.iloc[: n - 8], "val": examples.iloc[n - 8 : n - 4], "test": examples.iloc[n - 4 :]}
    model, tokenizer = predict.load_for_inference(tiny_model)
    runs = baselines.run_variants(
        model, tokenizer, card, splits, k_shots=1, batch_size=4, max_new_tokens=8, progress=False
    )
    names = [r.name for r in runs]
    expected = ["trivial", "zero-shot", "1-shot", "retrieval 1-shot"] + (["classical"] if card.choices else [])
    assert names == expected
    for run in runs:
        assert len(run.val) == 4 and len(run.test) == 4 and run.ms_per_example >= 0
        assert (run.rule is not None) == (bool(card.choices) and run.kind != "trivial")
    table = baselines.variant_table(card, runs, resamples=20)
    primary = metrics.evaluate(card, runs[0].test)["primary"]
    assert list(table.index) == expected and {
        f"val {primary}",
        f"test {primary}",
        "test low",
        "test high",
        "ms per example",
    } <= set(table)
    best, prompting = baselines.best_variant(runs, card), baselines.best_prompting(runs, card)
    run = RunFolder(tmp_path / "run")
    baselines.save_variants(run, card, runs, best, prompting, table)
    assert run.read_variants().best == best.name
    assert run.read_scores(run.baseline_scores()).variant == best.name
    assert baselines.load_variant(run, "retrieval 1-shot", "val")["id"].tolist() == runs[3].val["id"].tolist()
    if (
        card.task_kind == "tool_selection"
    ):  # the classical model picks the tool; the language model writes its arguments
        from tunebook.modeling.prompts import tool_prefix

        starts = [
            next((t for t in card.choices if p.startswith(tool_prefix(t))), None) for p in runs[-1].test["prediction"]
        ]
        assert None not in starts


@pytest.mark.workbook
def test_a_classical_baseline_that_meets_the_targets_skips_training_unless_forced(tiny_model, tmp_path):
    card, test = keyword_job(tmp_path / "job")
    params = {"JOB_CARD": str(card), "TEST_FILE": str(test), "BASE_MODEL": tiny_model, "K_SHOTS": 0}
    run_dir, summary = pipeline.run_workbook(
        params, tmp_path / "runs", "stops", steps=pipeline.NOTEBOOKS[:4], progress=False
    )
    assert (
        summary.results["02_prove_the_baseline"]["variant"] == "classical"
        and summary.results["02_prove_the_baseline"]["meets_targets"]
        and summary.results["02_prove_the_baseline"]["judged_on"] == "validation"
    )
    assert summary.stopped is None
    assert "best cheap baseline (classical) already meets every target" in summary.skipped["03_train_qlora"]
    assert RunFolder(run_dir).read_summary().skipped == summary.skipped
    assert not RunFolder(run_dir).adapter_dir.exists()
    forced = {**params, "FORCE_TRAINING": True, "MAX_STEPS": 1, "COMPARE_METHODS": "", "QUANTIZATION": "none"}
    run_dir, summary = pipeline.run_workbook(
        forced, tmp_path / "runs", "forced", steps=pipeline.NOTEBOOKS[:4], progress=False
    )
    assert summary.skipped == {} and RunFolder(run_dir).read_manifest().steps > 0
