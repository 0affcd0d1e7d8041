"""The decision rule: expected cost under the card, calibration, mixing and routing thresholds fitted on validation."""

import itertools

import numpy as np
import pytest
from conftest import EXAMPLE

from tunebook.card import schema as job
from tunebook.modeling import decision_rule as decide


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


def row(card, **probs):
    out = np.full(len(card.choices), 0.0)
    for name, p in probs.items():
        out[card.choices.index(name)] = p
    return out[None, :]


def test_the_cost_matrix_turns_an_uncertain_ticket_into_escalate(card):
    probs = row(card, billing=0.75, escalate=0.2, technical=0.05)
    assert probs.argmax() == card.choices.index("billing")  # the most likely label...
    assert decide.choose_answers(card, probs).tolist() == [
        "escalate"
    ]  # ...is not the cheapest answer: a missed escalation costs 10
    confident = row(card, billing=0.95, escalate=0.04, technical=0.01)
    assert decide.choose_answers(card, confident).tolist() == ["billing"]


def test_expected_cost_choice_equals_a_brute_force_check(card):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(card.choices)) * 0.5, size=500)
    chosen = decide.choose_answers(card, probs)
    for p, answer in zip(probs, chosen):
        costs = {a: sum(p[i] * card.error_cost(t, a) for i, t in enumerate(card.choices)) for a in card.choices}
        assert costs[answer] == pytest.approx(min(costs.values()))


def test_thresholds_route_guarded_answers_and_meet_the_must_never_limit_on_validation(card):
    rng = np.random.default_rng(1)
    truth = [card.choices[i % len(card.choices)] for i in range(60)]
    probs = rng.dirichlet(np.ones(len(card.choices)), size=60)
    for k, t in enumerate(truth):  # a weak signal for the truth
        probs[k, card.choices.index(t)] += 0.4
    probs /= probs.sum(axis=1, keepdims=True)
    hidden = truth.index("escalate")  # an escalation the model barely sees: the cost matrix alone misses it
    probs[hidden] = row(card, billing=0.9, escalate=0.06, technical=0.04)[0]
    assert decide.choose_answers(card, probs[hidden : hidden + 1]).tolist() == ["billing"]
    rule = decide.fit_rule(card, probs, truth)
    assert set(rule.thresholds) == {"escalate"}
    answers, calibrated = rule.decide(card, probs)
    assert decide.must_never_count(card, truth, answers) == 0 == rule.fitted_on["must_never_failures"]
    assert rule.fitted_on["must_never_limit_met"] is True
    # the threshold is the highest that keeps the limit: just above it, an escalation is missed
    column = calibrated[:, card.choices.index("escalate")]
    higher = column[column > rule.thresholds["escalate"]]
    if len(higher):
        looser = decide.choose_answers(card, calibrated, {"escalate": float(higher.min()) + 1e-12})
        assert (
            decide.total_cost(card, truth, looser) >= decide.total_cost(card, truth, answers)
            or decide.must_never_count(card, truth, looser) > 0
        )


def test_values_fitted_on_validation_are_reused_unchanged(card, tmp_path):
    rng = np.random.default_rng(2)
    val_truth = [card.choices[i % 6] for i in range(30)]
    val = rng.dirichlet(np.ones(6), size=30)
    other = rng.dirichlet(np.ones(6), size=30)
    for k, t in enumerate(val_truth):
        other[k, card.choices.index(t)] += 1.0  # the second model is the informative one
    other /= other.sum(axis=1, keepdims=True)
    rule = decide.fit_rule(card, val, val_truth, other, "classical")
    assert rule.mix_weight > 0.5 and rule.mix_with == "classical"
    path = decide.save_rule(rule, tmp_path / "rule.json")
    again = decide.load_rule(path)
    assert again == rule
    test, test_other = rng.dirichlet(np.ones(6), size=20), rng.dirichlet(np.ones(6), size=20)
    first, second = rule.decide(card, test, test_other), again.decide(card, test, test_other)
    assert (first[0] == second[0]).all() and np.allclose(first[1], second[1])
    with pytest.raises(Exception, match="pass them"):
        rule.decide(card, test)


def test_temperature_fitting_sharpens_an_underconfident_model(card):
    truth = [card.choices[i % 6] for i in range(60)]
    probs = np.full((60, 6), 0.12)
    for k, t in enumerate(truth):
        probs[k, card.choices.index(t)] = 0.4  # always right, never confident
    probs /= probs.sum(axis=1, keepdims=True)
    temperature = decide.fit_temperature(probs, np.array([card.choices.index(t) for t in truth]))
    assert temperature < 0.2


def test_a_rule_for_other_answers_is_refused(card):
    rule = decide.DecisionRule(choices=["a", "b"])
    with pytest.raises(Exception, match="fitted for answers"):
        rule.decide(card, np.ones((1, 6)) / 6)
    assert list(itertools.islice(decide.MIX_GRID, 2)) == [0.0, 0.05]
