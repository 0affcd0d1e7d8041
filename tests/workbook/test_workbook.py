"""The shared finished run (every notebook on the tiny model, each run alone as a learner catching up does): what
it records, shows and reproduces. Its tests stay in one file: `make test` gives them one xdist worker (conftest.py)."""

import nbformat
import pandas as pd
import pytest
from conftest import TRAFFIC

from tunebook.core.runfolder import RunFolder
from tunebook.workbook import runner as pipeline


def test_all_seven_notebooks_run_alone_one_after_another_and_record_results(finished_run):
    run_dir, summary = finished_run
    run = RunFolder(run_dir)
    for step in pipeline.NOTEBOOKS:
        assert run.notebook(step).is_file()
        assert step in summary.results
    assert run.read_summary() == summary
    assert set(summary.seconds_per_notebook) == set(pipeline.NOTEBOOKS)  # built one call per notebook, none lost
    for artifact in (
        run.job_card,
        run.approach_file,
        run.split_file("train"),
        run.dataset_version,
        run.baseline_predictions(),
        run.adapter_dir / "adapter_model.safetensors",
        run.figure("loss_curve"),
        run.figure("method_tradeoff"),
        run.tuned_scores,
        run.record,
    ):
        assert artifact.is_file(), artifact


def test_training_curve_is_drawn_live_in_the_notebook(finished_run):
    run_dir, _ = finished_run
    book = nbformat.read(run_dir / "03_train_qlora.ipynb", as_version=4)
    train_cell = next(c for c in book.cells if c.get("id") == "03-06")
    images = [
        o
        for o in train_cell.outputs
        if o.output_type in ("display_data", "update_display_data") and "image/png" in o.get("data", {})
    ]
    assert images, "the training cell should show the live loss curve"


def test_recorded_results_match_the_artifacts(finished_run, tiny_model):
    from tunebook.evaluate import step as evaluation
    from tunebook.modeling import predict
    from tunebook.scoring import metrics

    run_dir, summary = finished_run
    run = RunFolder(run_dir)
    version = run.read_dataset_version()
    baseline, tuned = run.read_scores(run.baseline_scores()).as_dict(), run.read_scores(run.tuned_scores).as_dict()
    manifest, record = run.read_manifest(), run.read_record()
    results = {step: run.read_results(step) for step in pipeline.NOTEBOOKS}
    assert results["00_define_the_job"].approach == "fine-tuning"
    assert results["01_clean_the_data"].dataset_hash == version.hash == manifest.dataset_hash
    assert results["01_clean_the_data"].splits == {"train": 18, "val": 6, "test": 6}
    assert results["02_prove_the_baseline"].metrics["macro_f1"] == pytest.approx(baseline["macro_f1"], abs=1e-4)
    assert results["04_evaluate"].metrics["macro_f1"] == pytest.approx(tuned["macro_f1"], abs=1e-4)
    assert baseline["n"] == tuned["n"] == 6
    assert results["05_release"].primary == "macro_f1"
    assert results["05_release"].baseline == pytest.approx(baseline["macro_f1"])
    assert record.lineage.dataset_hash == version.hash
    assert record.lineage.base_model == manifest.base_model
    assert manifest.config["max_steps"] == 3 and manifest.config["lora_r"] == 4
    comparison = run.read_comparison()
    assert comparison.mcnemar.n == 6 and comparison.mcnemar.p_value == results["04_evaluate"].mcnemar_p_value
    band = comparison.intervals["tuned"]["macro_f1"]
    assert band["low"] <= tuned["macro_f1"] <= band["high"]
    assert set(comparison.slices["tuned"]) <= {"hard", "not hard"} and comparison.usable_output_rate["tuned"] == 1.0
    adapter = evaluation.load_tuned(run, tiny_model)  # the overfitting row reads the adapter's own answers
    test = run.read_splits()["test"]
    alone = predict.predict(
        adapter.model,
        adapter.tokenizer,
        run.read_job_card(),
        test,
        progress=False,
        max_new_tokens=adapter.answer_budget,
    )
    assert comparison.overfitting.metric == "macro_f1" and comparison.overfitting.test == pytest.approx(
        metrics.evaluate(run.read_job_card(), alone)["macro_f1"]
    )
    assert set(comparison.calibration) == {"validation", "test"} and run.figure("reliability").is_file()
    assert set(comparison.regression_probe.change) == {"text_loss", "instruction_loss"}
    assert results["04_evaluate"].general_regression == comparison.regression_probe.regressed
    tradeoff = pd.read_csv(run.method_tradeoff, index_col="method")
    assert list(tradeoff.index) == ["nf4", "int8", "none", "full"] and (tradeoff["seconds_per_step"] > 0).all()
    sent = pd.read_csv(TRAFFIC / "in_distribution.csv").head(16)["id"]
    labelled = pd.read_csv(TRAFFIC / "in_distribution_labels.csv")["id"]
    assert results["06_monitor"].logged == 16 and results["06_monitor"].labelled == sent.isin(labelled).sum()
    assert (run_dir / results["06_monitor"].report).is_file() and run.inference_log.is_file()


@pytest.mark.workbook
def test_same_inputs_give_the_same_dataset_hash(finished_run, tiny_model, tmp_path):
    run_dir, summary = finished_run
    card = RunFolder(run_dir).job_card
    _, again = pipeline.run_workbook(
        {"JOB_CARD": str(card)}, tmp_path, "again", steps=pipeline.NOTEBOOKS[:2], progress=False
    )
    assert again.results["01_clean_the_data"]["dataset_hash"] == summary.results["01_clean_the_data"]["dataset_hash"]
