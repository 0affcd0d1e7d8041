"""Monitoring: drift signals and alert rules on the bundled triage traffic, the label-free accuracy estimate,
delayed labels, and the monitoring pass end to end (alerts.json, report, MLflow run, exit status, rollback)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLE

from tunebook import cli
from tunebook.card import schema as job
from tunebook.data import examples as data
from tunebook.data import splits as dataset
from tunebook.data.splits import stratum
from tunebook.errors import TunebookError
from tunebook.modeling import classical, predict
from tunebook.modeling import decision_rule as decide
from tunebook.monitor import signals as monitor
from tunebook.registry import register as registration
from tunebook.registry import store as registry
from tunebook.scoring import drift
from tunebook.serving import inference_log

TRAFFIC = EXAMPLE / "traffic"


@pytest.fixture(scope="module")
def triage():
    """A released classical model of the bundled triage job (its decision rule fitted on validation), the reference
    it is watched against (its test predictions), and an answerer that logs like a served model."""
    card = job.load_job_card(EXAMPLE / "job.yaml")
    splits = dataset.split(data.load_examples(card)[0], card)
    model = classical.fit_classical(card, splits["train"])
    truth = [stratum(card, t) for t in splits["val"]["target"]]
    rule = decide.fit_rule(card, model.predict_proba(splits["val"]["text"].tolist()), truth)

    def answer(frame: pd.DataFrame) -> pd.DataFrame:
        examples = frame.assign(target=frame.get("target", ""), tags="")[["id", "text", "target", "tags"]]
        probs = model.predict_proba(examples["text"].tolist())
        return predict.answer_choices(None, None, card, examples, probs, rule, progress=False)

    def logged(name: str) -> pd.DataFrame:
        traffic = pd.read_csv(TRAFFIC / f"{name}.csv", dtype=str)
        records = inference_log.log_records(card.name, "1", answer(traffic), traffic["text"].tolist(), 5.0)
        return pd.DataFrame([r.model_dump() for r in records])

    reference = monitor.reference_from(card, answer(splits["test"]))
    return card, reference, {name: logged(name) for name in ("in_distribution", "shifted")}


def _windows(log: pd.DataFrame, n: int = 20, size: int = 150):
    rng = np.random.default_rng(0)
    return [log.iloc[np.sort(rng.choice(len(log), size, replace=False))] for _ in range(n)]


def test_in_distribution_traffic_raises_at_most_one_alert_in_twenty_resamples(triage):
    card, reference, logs = triage
    fired = [
        [r.signal for r in monitor.readings(card, reference, window) if r.fired]
        for window in _windows(logs["in_distribution"])
    ]
    assert sum(bool(f) for f in fired) <= 1, fired


def test_delayed_labels_on_in_distribution_traffic_stay_quiet_and_a_real_drop_fires(triage):
    card, reference, logs = triage
    truth = monitor.checked_labels(card, pd.read_csv(TRAFFIC / "in_distribution_labels.csv", dtype=str))
    fired = [
        [r.signal for r in monitor.readings(card, reference, window, truth) if r.fired]
        for window in _windows(logs["in_distribution"], size=40)  # ~25 labels each, as in 06's default batch
    ]
    assert sum(bool(f) for f in fired) <= 1, [f for f in fired if f]
    window = logs["in_distribution"].copy()
    labelled = window["id"].isin(truth["id"]).to_numpy()
    wrong = {t: next(c for c in card.choices if c != t) for t in card.choices}
    broken = labelled & (np.arange(len(window)) % 2 == 0)  # half the labelled answers made wrong
    window.loc[broken, "answer"] = window.loc[broken, "id"].map(truth.set_index("id")["target"]).map(wrong)
    readings = {r.signal: r for r in monitor.readings(card, reference, window, truth)}
    assert readings["labelled_metric_p_value"].fired, readings["labelled_metric_p_value"]
    assert readings["labelled_metric_p_value"].detail["correct_drop"] > 0.2


def test_the_shifted_traffic_alerts_every_time_and_names_what_moved(triage):
    card, reference, logs = triage
    for window in _windows(logs["shifted"]):
        readings = {r.signal: r for r in monitor.readings(card, reference, window)}
        fired = {name for name, r in readings.items() if r.fired}
        assert "length_p_value" in fired, fired  # the wave's tickets are long
        assert (
            readings["length_p_value"].detail["window_median"] > readings["length_p_value"].detail["reference_median"]
        )
        assert readings["text_auc"].value > 0.6  # and written in words the reference did not use


def test_the_label_free_estimate_tracks_accuracy_when_confidences_are_calibrated():
    rng = np.random.default_rng(3)

    def calibrated(n: int, a: float, b: float) -> tuple[pd.Series, np.ndarray]:
        confidence = pd.Series(rng.beta(a, b, n))
        return confidence, rng.random(n) < confidence  # right with probability = confidence

    ref_confidence, ref_correct = calibrated(400, 5, 2)
    for a, b in ((5, 2), (5, 2), (2, 2), (3, 2)):  # like the reference, then less and less sure
        confidence, correct = calibrated(1000, a, b)
        estimate = drift.estimated_accuracy(ref_correct.mean(), ref_confidence.mean(), confidence)
        assert abs(estimate - correct.mean()) < 0.05, (a, b, estimate, correct.mean())
    overconfident = pd.Series(np.clip(rng.beta(5, 2, 1000) + 0.15, 0, 1))  # the same answers, stated more surely
    assert drift.estimated_accuracy(ref_correct.mean(), ref_confidence.mean(), overconfident) > correct.mean() + 0.05


def test_delayed_labels_give_the_metric_with_an_interval_and_the_must_never_check(triage):
    card, reference, logs = triage
    labels = pd.read_csv(TRAFFIC / "in_distribution_labels.csv", dtype=str)
    readings = {
        r.signal: r
        for r in monitor.readings(card, reference, logs["in_distribution"], monitor.checked_labels(card, labels))
    }
    drop = readings["labelled_metric_p_value"].detail
    assert drop["labelled"] == len(labels) and drop["metric"] == reference.metrics["primary"]
    assert drop["low"] <= drop["window"] <= drop["high"] and drop["release"] == reference.metrics[drop["metric"]]
    assert drop["drop"] == pytest.approx(drop["release"] - drop["window"])
    assert readings["labelled_metric_p_value"].value == drop["p_value"] and 0 < drop["p_value"] <= 1
    joined = monitor.with_labels(card, monitor.window_frame(logs["in_distribution"], card, 500), labels)
    failures = sum(card.is_must_never(t, p) for t, p in zip(joined["target"], joined["prediction"]))
    assert readings["must_never_p_value"].detail["failures"] == failures
    with pytest.raises(TunebookError, match="labels.csv: a labels file needs an 'id' column"):
        monitor.with_labels(card, joined, labels.rename(columns={"id": "ticket"}), "labels.csv")


def test_labels_of_another_job_are_refused_naming_the_rows_and_unlabelled_rows_wait(triage):
    card, _, _ = triage
    labels = pd.read_csv(TRAFFIC / "in_distribution_labels.csv", dtype=str)
    waiting = pd.concat([labels, pd.DataFrame({"id": ["L9999"], "label": [""]})])
    assert list(monitor.checked_labels(card, waiting)["id"]) == list(labels["id"])  # no label yet: not an error
    typo = labels.assign(label=labels["label"].where(labels.index != 2, "biling"))
    with pytest.raises(TunebookError, match=r"labels.csv: 1 labels do not fit .*row 3 \(id L\d+\).*'billing'"):
        monitor.checked_labels(card, typo, "labels.csv")
    orders = job.load_job_card(EXAMPLE.parent / "order_extraction" / "job.yaml")
    with pytest.raises(TunebookError, match="do not fit job 'order_extraction' .*another job"):
        monitor.checked_labels(orders, labels, "labels.csv")


def test_auto_traffic_is_the_jobs_own_example_traffic_or_none(triage, tmp_path):
    from tunebook.monitor.step import example_traffic

    card, _, _ = triage
    bundled = job.load_job_card(EXAMPLE / "job.yaml")
    assert example_traffic(bundled, "auto", "auto") == (
        TRAFFIC / "in_distribution.csv",
        TRAFFIC / "in_distribution_labels.csv",
    )
    assert example_traffic(bundled, "auto", "") == (TRAFFIC / "in_distribution.csv", None)
    elsewhere = bundled.model_copy(update={"data": bundled.data.model_copy(update={"path": str(tmp_path / "t.csv")})})
    assert example_traffic(elsewhere, "auto", "auto") == (None, None)
    assert example_traffic(elsewhere, str(TRAFFIC / "shifted.csv"), "auto") == (
        TRAFFIC / "shifted.csv",
        TRAFFIC / "shifted_labels.csv",
    )


def test_rules_in_the_job_card_replace_the_defaults_and_small_windows_stay_quiet(triage):
    card, reference, logs = triage
    strict = card.model_copy(
        update={
            "monitoring": job.Monitoring(
                rules=[job.MonitorRule(signal="text_auc", threshold=0.3, window=100)], min_window=50
            )
        }
    )
    readings = {r.signal: r for r in monitor.readings(strict, reference, logs["in_distribution"])}
    assert readings["text_auc"].threshold == 0.3 and readings["text_auc"].window == 100 and readings["text_auc"].fired
    assert readings["prediction_psi"].threshold == 0.25  # the other defaults stand
    few = monitor.readings(strict, reference, logs["shifted"].head(40))
    assert not any(r.fired for r in few) and all("only 40 logged predictions" in r.note for r in few)
    assert job.card_hash(strict) == job.card_hash(card)  # alert rules do not make the adapter another job's
    with pytest.raises(Exception, match="signal"):
        job.MonitorRule(signal="vibes", threshold=1)


def test_a_monitoring_pass_writes_its_verdict_report_and_run_and_rolls_back_on_an_alert(
    released, tiny_model, tmp_path, monkeypatch, capsys
):
    from tunebook.serving import serve

    runs, _, _ = released
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns("good", "shuffled"))  # the registry, not the runs
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    store = registry.open_registry(workspace=copy)
    registration.promote(store, "support_triage", 2, force=True, reason="testing the monitor's rollback")
    answerer = serve.load_released(store, "support_triage", base_model=tiny_model)
    log = tmp_path / "log.jsonl"
    serve.send_traffic(answerer, TRAFFIC / "shifted.csv", log, rows=60)
    with log.open("a") as handle:
        handle.write("not json\n")
    where = ["--job", "support_triage", "--runs-dir", str(copy)]
    out = tmp_path / "pass"
    code = cli.main(["monitor", *where, "--log", str(log), "--out", str(out), "--rollback-on-alert"])
    printed = capsys.readouterr()
    verdict = json.loads((out / "alerts.json").read_text())
    assert code == 1 and verdict["alert"] and verdict["version"] == "2" and verdict["logged"] == 60
    assert "length_p_value" in verdict["fired"] and "line 61" in verdict["log_problems"][0]
    assert verdict["rollback_to"] == "1" and verdict["rolled_back"]
    assert f"tunebook rollback --job support_triage --runs-dir {copy}" in verdict["rollback_command"]
    assert "ALERT 'support_triage' version 2" in printed.out and "line 61" in printed.err
    assert str(registry.champion(store, "support_triage").version) == "1"
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "length_p_value" in page and "http" not in page.split("<body>")[1]
    run = store.client.get_run(verdict["mlflow_run_id"])
    assert run.data.tags["tunebook.monitored_version"] == "2" and "length_p_value" in run.data.metrics
    assert cli.main(["monitor", *where, "--log", str(log), "--out", str(out)]) == 2  # never overwrites a pass
    quiet = tmp_path / "quiet.jsonl"
    serve.send_traffic(
        serve.load_released(store, "support_triage", base_model=tiny_model), _keyword_file(tmp_path), quiet
    )
    assert cli.main(["monitor", *where, "--log", str(quiet), "--out", str(tmp_path / "quiet")]) == 0


def _keyword_file(tmp_path):
    from conftest import keyword_tickets

    path = tmp_path / "keywords.csv"
    pd.DataFrame(keyword_tickets(8, seed=11, start=3000))[["id", "text"]].to_csv(path, index=False)
    return path


def _registry_copy(runs, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns("good", "shuffled"))  # the registry, not the runs
    return copy, registry.open_registry(workspace=copy)


def test_a_challenger_runs_in_shadow_and_promotion_can_require_a_quiet_window(
    released, tiny_model, tmp_path, monkeypatch
):
    from tunebook.monitor import shadow
    from tunebook.serving import serve

    runs, _, _ = released
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path / "cache"))
    copy, store = _registry_copy(runs, tmp_path)
    with pytest.raises(TunebookError, match="version 2 of 'support_triage' has not run in shadow"):
        registration.promote(store, "support_triage", 2, force=True, reason="x", require_shadow=True)
    log = tmp_path / "champion.jsonl"
    serve.send_traffic(
        serve.load_released(store, "support_triage", base_model=tiny_model), _keyword_file(tmp_path), log
    )
    verdict, disagreements = shadow.run_shadow(store, "support_triage", log, 2, tmp_path / "shadow", tiny_model)
    assert (verdict.champion, verdict.challenger, verdict.window) == ("1", "2", 48)
    assert 0 <= verdict.agreement < 1 and len(disagreements) == round((1 - verdict.agreement) * 48)
    assert set(disagreements.columns) == {"id", "text", "champion", "challenger"}
    assert verdict.champion_estimated_accuracy is not None and verdict.challenger_estimated_accuracy is not None
    tags = registry.get_version(store, "support_triage", 2).tags
    assert (
        tags["tunebook.shadow"] == ("alert" if verdict.alert else "quiet") and tags["tunebook.shadow_window"] == "48"
    )
    shadow_log, problems = inference_log.read_log(tmp_path / "shadow" / "shadow_log.jsonl")
    assert problems == [] and set(shadow_log["model_version"]) == {"2"} and len(shadow_log) == 48
    if verdict.alert:
        with pytest.raises(TunebookError, match="raised an alert in its shadow window"):
            registration.promote(store, "support_triage", 2, force=True, reason="x", require_shadow=True)
    else:
        done = registration.promote(store, "support_triage", 2, force=True, reason="x", require_shadow=True)
        assert done.champion == "2"


def test_labelled_traffic_goes_back_to_the_data_and_01_compares_them(triage, tiny_model, tmp_path):
    from tunebook.clean import step as cleaning
    from tunebook.core.runfolder import RunFolder
    from tunebook.monitor import feedback

    card, _, logs = triage
    log = tmp_path / "log.jsonl"
    records = [inference_log.LoggedPrediction.model_validate(r) for r in logs["shifted"].to_dict("records")]
    inference_log.append(log, records)
    out = tmp_path / "traffic_rows.csv"
    rows = feedback.export_labelled_traffic(card, log, TRAFFIC / "shifted_labels.csv", out)
    labels = pd.read_csv(TRAFFIC / "shifted_labels.csv", dtype=str)
    assert len(rows) == len(labels) and rows["id"].str.startswith("traffic-").all()
    assert set(rows["tags"]) == {"traffic"} and rows["served_at"].notna().all() and set(rows["source"]) == {str(log)}
    with pytest.raises(TunebookError, match="already exists"):
        feedback.export_labelled_traffic(card, log, TRAFFIC / "shifted_labels.csv", out)
    run = RunFolder(tmp_path / "run")
    run.write_job_card(card)
    settings = cleaning.CleanSettings(labelled_traffic=str(out), base_model=tiny_model)
    audited = cleaning.read_and_audit(run, settings)
    original = len(data.load_examples(card)[0])
    assert len(audited.examples) == original + len(rows)
    difference = audited.traffic_difference
    assert difference.loc["text classifier AUC (0.5: alike)", "traffic"] > 0.7  # the smart-lock wave stands out
    assert difference.loc["share of escalate", "traffic"] > difference.loc["share of escalate", "training"] + 0.2
    assert cleaning.cleaning_policy(settings, {})["traffic"]["path"] == str(out)


@pytest.mark.parametrize("name", ["order_extraction", "support_tools", "reply_drafting"])
def test_delayed_labels_are_compared_with_the_release_for_every_task_kind(name):
    card = job.load_job_card(EXAMPLE.parent / name / "job.yaml")
    examples = data.load_examples(card)[0]
    test = examples.iloc[::2].assign(prediction=lambda f: f["target"])
    window = examples.iloc[1::2].head(60).reset_index(drop=True)
    wrong = window.index % 2 == 0  # half the window answered with another example's answer
    window["prediction"] = window["target"].where(~wrong, test["target"].iloc[0])
    records = inference_log.log_records(card.name, "1", window[["id", "prediction"]], window["text"].tolist(), 5.0)
    labels = pd.DataFrame(
        {"id": window["id"], "label": [t if isinstance(t, str) else json.dumps(t) for t in window["target"]]}
    )
    log = pd.DataFrame([r.model_dump() for r in records])
    readings = monitor.readings(card, monitor.reference_from(card, test), log, monitor.checked_labels(card, labels))
    reading = next(r for r in readings if r.signal == "labelled_metric_p_value")
    assert reading.value is not None and reading.detail["labelled"] == 60 and reading.detail["drop"] > 0
    if card.task_kind != "drafting":  # a draft's rules hold whatever answer it copies
        assert reading.fired, reading
