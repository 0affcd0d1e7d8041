"""Task metrics, targets and the baseline verdict."""

import pandas as pd
import pytest
from sklearn.metrics import f1_score

from tunebook import job, metrics, release

from conftest import EXAMPLE


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


def frame(pairs):
    return pd.DataFrame({"id": [str(i) for i in range(len(pairs))], "target": [t for t, _ in pairs], "prediction": [p for _, p in pairs]})


PAIRS = [("billing", "billing"), ("billing", "escalate"), ("escalate", "billing"), ("shipping", "shipping"),
         ("technical", "account"), ("account", "account"), ("feature_request", "feature_request"), ("escalate", "escalate")]


def test_classification_metrics(card):
    result = metrics.classification_metrics(card, frame(PAIRS))
    truth, pred = zip(*PAIRS)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["macro_f1"] == pytest.approx(f1_score(truth, pred, labels=card.label_names, average="macro", zero_division=0))
    assert result["cost_weighted_error"] == pytest.approx((2 + 10 + 1) / 8)
    assert result["must_never_failures"] == 1
    assert result["must_never_examples"] == [{"id": "2", "target": "escalate", "prediction": "billing"}]
    assert result["per_class"]["technical"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["confusion_matrix"]["matrix"][card.label_names.index("escalate")][card.label_names.index("billing")] == 1


def test_targets_and_verdict(card):
    result = metrics.classification_metrics(card, frame(PAIRS))
    checks = {c["target"]: c["met"] for c in metrics.check_targets(card, result)}
    assert checks == {"macro_f1": False, "accuracy": False, "must_never_failures": False}
    assert metrics.baseline_verdict(card, result).startswith("Prompting misses 3 target(s)")
    perfect = metrics.classification_metrics(card, frame([(t, t) for t, _ in PAIRS]))
    assert metrics.baseline_verdict(card, perfect).startswith("Prompting meets every target")


def test_compare_states_the_difference(card):
    base = metrics.classification_metrics(card, frame(PAIRS))
    tuned = metrics.classification_metrics(card, frame([(t, t) for t, _ in PAIRS]))
    comparison = release.compare(card, base, tuned)
    assert comparison["tuned_beats_baseline"] is True
    assert comparison["metrics"]["macro_f1"]["change"] == pytest.approx(tuned["macro_f1"] - base["macro_f1"])
    assert "better by +" in comparison["headline"]
