"""Task metrics, targets and the baseline verdict."""

import json

import pandas as pd
import pytest
from conftest import EXAMPLE, ROOT
from sklearn.metrics import f1_score

from tunebook.card import schema as job
from tunebook.core.artifacts import Scores
from tunebook.release import gate
from tunebook.scoring import metrics


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


def frame(pairs):
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(len(pairs))],
            "target": [t for t, _ in pairs],
            "prediction": [p for _, p in pairs],
        }
    )


PAIRS = [
    ("billing", "billing"),
    ("billing", "escalate"),
    ("escalate", "billing"),
    ("shipping", "shipping"),
    ("technical", "account"),
    ("account", "account"),
    ("feature_request", "feature_request"),
    ("escalate", "escalate"),
]


def test_classification_metrics(card):
    result = metrics.evaluate(card, frame(PAIRS))
    truth, pred = zip(*PAIRS)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["macro_f1"] == pytest.approx(
        f1_score(truth, pred, labels=card.label_names, average="macro", zero_division=0)
    )
    assert result["cost_weighted_error"] == pytest.approx((2 + 10 + 1) / 8)
    assert result["must_never_failures"] == 1
    assert result["must_never_examples"] == [{"id": "2", "target": "escalate", "prediction": "billing"}]
    assert result["per_class"]["technical"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert (
        result["confusion_matrix"]["matrix"][card.label_names.index("escalate")][card.label_names.index("billing")]
        == 1
    )


def test_targets_and_verdict(card):
    result = metrics.evaluate(card, frame(PAIRS))
    checks = {c.target: c.met for c in metrics.check_targets(card, result)}
    assert checks == {"macro_f1": False, "accuracy": False, "must_never_failures": False}
    verdict = metrics.baseline_verdict(card, result, "classical")
    assert (
        verdict.text.startswith("On validation, the best cheap baseline (classical) misses 3 target(s)")
        and not verdict.meets_targets
    )
    assert verdict.missed == ["macro_f1", "accuracy", "must_never_failures"]
    perfect = metrics.evaluate(card, frame([(t, t) for t, _ in PAIRS]))
    verdict = metrics.baseline_verdict(card, perfect, "classical")
    assert verdict.meets_targets and "fine-tuning is not warranted" in verdict.text
    assert verdict.judged_on == "validation" and verdict.close == []


def test_a_target_met_only_by_the_estimate_is_met_and_said_to_be_close(card):
    perfect = metrics.evaluate(card, frame([(t, t) for t, _ in PAIRS]))
    verdict = metrics.baseline_verdict(card, perfect, "classical", {"macro_f1": (0.5, 1.0)})
    assert verdict.meets_targets and len(verdict.close) == 1 and verdict.close[0].startswith("macro_f1")
    assert "the 95% interval reaches below the target" in verdict.text


def test_extraction_reports_slot_filling_figures_so_null_everywhere_scores_zero():
    from tunebook.card.schema import load_job_card

    card = load_job_card(ROOT / "examples" / "order_extraction" / "job.yaml")
    fields = list(card.output_schema["properties"])
    truth = [
        {f: None for f in fields} | {fields[0]: "A1", fields[1]: 2},
        {f: None for f in fields} | {fields[0]: "B2"},
    ]
    nulls = json.dumps({f: None for f in fields})
    rows = pd.DataFrame(
        {
            "id": ["1", "2"],
            "target": [json.dumps(t) for t in truth],
            "text": ["", ""],
            "tags": ["", ""],
            "prediction": [nulls, json.dumps(truth[1] | {fields[0]: "WRONG"})],
        }
    )
    result = metrics.evaluate(card, rows)
    assert result["slot_recall"] == 0.0 and result["slot_precision"] == 0.0 and result["slot_f1"] == 0.0
    assert result["field_accuracy"] > 0.5  # the per-field view rewards the nulls
    half = rows.assign(prediction=[json.dumps(truth[0]), nulls])
    result = metrics.evaluate(card, half)
    assert result["slot_precision"] == 1.0 and result["slot_recall"] == pytest.approx(2 / 3)
    assert result["slot_f1"] == pytest.approx(0.8)


def test_compare_states_the_difference(card):
    base = metrics.evaluate(card, frame(PAIRS))
    tuned = metrics.evaluate(card, frame([(t, t) for t, _ in PAIRS]))
    comparison = gate.compare(card, Scores.model_validate(base), Scores.model_validate(tuned))
    assert comparison.tuned_beats_baseline is True
    assert comparison.metrics["macro_f1"]["change"] == pytest.approx(tuned["macro_f1"] - base["macro_f1"])
    assert "better by +" in comparison.summary


def test_per_label_figures_are_scikit_learns_including_answers_outside_the_labels():
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from tunebook.card.tasks.base import label_figures

    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d"]
    for _ in range(200):
        n = int(rng.integers(1, 25))
        y_true = list(rng.choice(labels[: int(rng.integers(1, 5))], n))
        y_pred = list(rng.choice([*labels, "", "not a label"], n))
        ours = label_figures(labels, y_true, y_pred)
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
        assert np.allclose(ours["precision"], precision) and np.allclose(ours["recall"], recall)
        assert np.allclose(ours["f1"], f1) and (ours["support"] == support).all()
        for average in ("macro", "weighted"):
            assert ours[f"{average}_f1"] == pytest.approx(
                f1_score(y_true, y_pred, labels=labels, average=average, zero_division=0)
            )
        assert (ours["matrix"] == confusion_matrix(y_true, y_pred, labels=labels)).all()
