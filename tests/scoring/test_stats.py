"""Uncertainty and paired comparison of two models' predictions on the same examples."""

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLE, write_job

from tunebook.card import schema as job
from tunebook.errors import TunebookError
from tunebook.scoring import stats


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


def frame(targets, predictions, tags=None):
    n = len(targets)
    return pd.DataFrame(
        {
            "id": [f"T{i}" for i in range(n)],
            "text": [f"ticket {i}" for i in range(n)],
            "target": targets,
            "prediction": predictions,
            "tags": tags or [""] * n,
        }
    )


def test_a_clear_improvement_is_significant_and_balanced_flips_are_not(card):
    truth = ["billing"] * 30
    baseline = frame(truth, ["shipping"] * 30)
    tuned = frame(truth, ["billing"] * 20 + ["shipping"] * 10)
    result = stats.mcnemar(card, baseline, tuned)
    assert (result.fixed, result.broken) == (20, 0) and result.significant and result.p_value < 1e-5
    assert result.verdict.startswith("The difference is real") and "better" in result.verdict
    mixed = frame(truth, ["billing"] * 15 + ["shipping"] * 15)
    other = frame(truth, ["shipping"] * 15 + ["billing"] * 15)
    balanced = stats.mcnemar(card, mixed, other)
    assert (balanced.fixed, balanced.broken) == (15, 15) and not balanced.significant
    assert balanced.verdict.startswith("The difference could be chance")


def test_mcnemar_refuses_different_examples(card):
    with pytest.raises(TunebookError, match="same examples"):
        stats.mcnemar(card, frame(["billing"] * 3, ["billing"] * 3), frame(["billing"] * 2, ["billing"] * 2))


def test_bootstrap_intervals_hold_the_value_and_narrow_with_more_examples(card):
    rng = np.random.default_rng(0)
    labels = card.label_names

    def noisy(n):
        truth = list(rng.choice(labels, n))
        return frame(truth, [t if rng.random() < 0.7 else labels[0] for t in truth])

    small, large = noisy(40), noisy(400)
    a = stats.bootstrap(card, small, resamples=200)
    b = stats.bootstrap(card, large, resamples=200)
    assert (a["low"] <= a["value"]).all() and (a["value"] <= a["high"]).all()
    assert (b.loc["accuracy", "high"] - b.loc["accuracy", "low"]) < (
        a.loc["accuracy", "high"] - a.loc["accuracy", "low"]
    )
    pd.testing.assert_frame_equal(a, stats.bootstrap(card, small, resamples=200))  # seeded


def test_flips_list_what_tuning_fixed_and_broke(card):
    truth = ["billing", "shipping", "refund"]
    result = stats.flips(
        card, frame(truth, ["billing", "billing", "refund"]), frame(truth, ["shipping", "shipping", "refund"])
    )
    assert result[["id", "flip"]].values.tolist() == [["T0", "broken by tuning"], ["T1", "fixed by tuning"]]


def test_slices_separate_hard_cases(card):
    predictions = frame(
        ["billing"] * 4, ["billing", "billing", "shipping", "shipping"], tags=["", "", "hard", "hard,angry"]
    )
    table = stats.slices(card, predictions)
    assert table.loc["hard", "accuracy"] == 0 and table.loc["not hard", "accuracy"] == 1
    assert table.loc["hard", "n"] == 2


@pytest.mark.parametrize("example", ["order_extraction", "support_tools", "reply_drafting"])
def test_fully_correct_and_valid_outputs_per_task_kind(tmp_path, example):
    kind_card = job.load_job_card(write_job(tmp_path, per_label=1, example=example))
    from tunebook.data import examples as data

    examples, _ = data.load_examples(kind_card)
    rows = examples.head(2)
    right = rows.assign(prediction=rows["target"])
    wrong = rows.assign(prediction=["not json at all", ""])
    assert stats.fully_correct(kind_card, right).all()
    assert not stats.fully_correct(kind_card, wrong).any()
    if example != "reply_drafting":
        assert stats.valid_output_rate(kind_card, right) == 1.0 and stats.valid_output_rate(kind_card, wrong) == 0.0
    else:
        assert stats.valid_output_rate(kind_card, wrong) == 0.5


def test_valid_label_rate(card):
    assert stats.valid_output_rate(card, frame(["billing", "billing"], ["billing", "banana"])) == 0.5


def test_overfitting_warns_past_the_gap(card):
    truth = card.label_names * 2
    memorised = stats.overfitting(card, frame(truth, truth), frame(truth, [card.label_names[0]] * len(truth)))
    assert memorised.gap == pytest.approx(memorised.train - memorised.test) and memorised.gap > 0.5
    assert memorised.metric == "macro_f1" and "memorised" in memorised.warning
    assert stats.overfitting(card, frame(truth, truth), frame(truth, truth)).warning is None


def test_abstain_threshold_keeps_the_most_examples_that_meet_the_accuracy(card):
    val = frame(["billing"] * 6, ["billing", "billing", "billing", "shipping", "billing", "shipping"])
    val["confidence"] = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
    chosen = stats.abstain_threshold(val, required_accuracy=0.8)
    assert (
        chosen["threshold"] == 0.6
        and chosen["coverage"] == pytest.approx(5 / 6)
        and chosen["accuracy"] == pytest.approx(0.8)
    )
    assert stats.abstain_threshold(val, required_accuracy=1.01)["threshold"] is None
    assert stats.apply_threshold(val, 0.8) == {"coverage": 0.5, "accuracy": 1.0}
    table = stats.reliability_table(val, bins=2)
    assert table["examples"].sum() == 6 and table.loc["0.5-1.0", "accuracy"] == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    ("example", "metric"),
    [
        ("support_triage", "accuracy"),
        ("order_extraction", "record_exact_match"),
        ("support_tools", "argument_exact_match"),
        ("reply_drafting", "rule_pass_rate"),
    ],
)
def test_fully_correct_agrees_with_the_exact_match_metric(tmp_path, example, metric):
    from tunebook.data import examples as data
    from tunebook.scoring import metrics

    kind_card = job.load_job_card(write_job(tmp_path, per_label=2, example=example))
    examples, _ = data.load_examples(kind_card)
    rows = examples.head(8)
    # half right, half answered with another example's target
    shifted = list(rows["target"].iloc[4:]) + list(rows["target"].iloc[:4])
    predictions = rows.assign(prediction=list(rows["target"].iloc[:4]) + shifted[4:])
    correct = stats.fully_correct(kind_card, predictions)
    assert 0 < correct.mean() < 1
    assert correct.mean() == pytest.approx(metrics.evaluate(kind_card, predictions)[metric])


@pytest.mark.parametrize(
    ("example", "key", "score"),
    [
        ("support_triage", "per_class", "recall"),
        ("order_extraction", "per_field", "exact_match"),
        ("support_tools", "per_tool", "recall"),
        ("reply_drafting", "per_rule", "pass_rate"),
    ],
)
def test_part_rates_are_the_metrics_per_part_figures(tmp_path, example, key, score):
    from tunebook.data import examples as data
    from tunebook.scoring import metrics

    kind_card = job.load_job_card(write_job(tmp_path, per_label=2, example=example))
    examples, _ = data.load_examples(kind_card)
    rows = examples.head(8)
    shifted = list(rows["target"].iloc[4:]) + list(rows["target"].iloc[:4])
    predictions = rows.assign(prediction=list(rows["target"].iloc[:4]) + shifted[4:])
    parts = metrics.evaluate(kind_card, predictions)[key]
    table = stats.part_drops(kind_card, rows.assign(prediction=rows["target"]), predictions)
    for part, figures in parts.items():
        if part in table.index:
            assert table.loc[part, "candidate"] == pytest.approx(figures[score]), part
    assert table.loc["(whole answers)", "candidate"] == pytest.approx(
        stats.fully_correct(kind_card, predictions).mean()
    )


def test_a_significant_drop_is_flagged_and_a_small_one_is_not(card):
    truth = ["billing"] * 20 + ["escalate"] * 4
    reference = frame(truth, truth)
    worse = frame(truth, ["shipping"] * 8 + ["billing"] * 12 + truth[20:])
    table = stats.part_drops(card, reference, worse)
    assert table.loc["billing", "significant_drop"] and table.loc["billing", "broken"] == 8
    assert table.loc["billing", "p_value"] == pytest.approx(0.5**8)
    assert not table.loc["escalate", "significant_drop"] and table.loc["escalate", "drop"] == 0
    one_off = frame(truth, ["shipping"] + truth[1:])
    assert not stats.part_drops(card, reference, one_off).loc[
        "billing", "significant_drop"
    ]  # p = 0.5: could be chance
    shuffled = worse.sample(frac=1, random_state=0)  # order does not matter: examples are paired by id
    assert stats.part_drops(card, reference, shuffled).equals(table)
    with pytest.raises(TunebookError, match="same examples"):
        stats.part_drops(card, reference, worse.head(10))
