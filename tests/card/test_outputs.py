"""Checking targets and model outputs against the card: JSON, schemas, tool calls, drafting rules."""

import json

import pandas as pd
import pytest
from conftest import EXAMPLE

from tunebook.card import answers as outputs
from tunebook.card import schema as job
from tunebook.card.tasks import task_of
from tunebook.scoring import metrics

EXAMPLES = EXAMPLE.parent


@pytest.fixture(scope="module")
def cards():
    return {
        name: job.load_job_card(EXAMPLES / name / "job.yaml")
        for name in ("order_extraction", "support_tools", "reply_drafting")
    }


ORDER = {
    "order_id": "A12345",
    "product": "yoga mat",
    "quantity": 2,
    "delivery_date": None,
    "gift_wrap": False,
    "priority": "express",
}


def test_extraction_targets_are_canonical_and_checked(cards):
    card = cards["order_extraction"]
    shuffled = dict(reversed(list(ORDER.items())))
    text, problems = task_of(card).parse_target(card, shuffled, "msg")
    assert problems == [] and text == json.dumps(ORDER)
    _, problems = task_of(card).parse_target(card, {**ORDER, "quantity": 0}, "msg")
    assert problems == ["quantity: 0 is less than the minimum of 1"]
    _, problems = task_of(card).parse_target(card, '{"order_id": ', "msg")
    assert problems[0].startswith("not valid JSON")


def test_tool_calls_are_checked_against_the_catalogue(cards):
    card = cards["support_tools"]
    assert outputs.check_tool_call(card, {"tool": "track_parcel", "arguments": {"order_id": "A12345"}}) == []
    assert outputs.check_tool_call(card, {"tool": "refund_order", "arguments": {}})[0].startswith(
        "unknown tool 'refund_order'"
    )
    assert outputs.check_tool_call(card, {"tool": "track_parcel", "arguments": {}}) == [
        "arguments.(root): 'order_id' is a required property"
    ]
    assert outputs.check_tool_call(card, ["track_parcel"]) == [
        'expected an object with exactly "tool" and "arguments"'
    ]


GOOD = "Hi Ana,\n\nSorry your order A12345 is late. I have asked the courier for an update and will write again as soon as I hear back from them today.\n\nParcelly Support"


def test_drafting_rules(cards):
    card = cards["reply_drafting"]
    assert all(outputs.check_draft(card, GOOD, "Where is A12345? Ana").values())
    bad = "Hello Ana,\n\n**Unfortunately** your order is late.\n\nThanks"
    result = outputs.check_draft(card, bad, "Where is A12345? Ana")
    assert {name for name, ok in result.items() if not ok} == {
        "required:greeting",
        "echo:order_number",
        "no_forbidden_phrases",
        "length",
        "closing_line",
        "plain_text",
    }


def test_extraction_metrics(cards):
    card = cards["order_extraction"]
    frame = pd.DataFrame(
        {
            "id": ["1", "2", "3"],
            "text": ["", "", ""],
            "target": [json.dumps(ORDER)] * 3,
            "prediction": [json.dumps(ORDER), json.dumps({**ORDER, "order_id": "A99999"}), "not json"],
        }
    )
    result = metrics.evaluate(card, frame)
    assert result["json_validity"] == pytest.approx(2 / 3)
    assert result["schema_validity"] == pytest.approx(2 / 3)
    assert result["record_exact_match"] == pytest.approx(1 / 3)
    assert result["per_field"]["order_id"]["exact_match"] == pytest.approx(1 / 3)
    assert result["per_field"]["product"]["exact_match"] == pytest.approx(2 / 3)
    weights = card.field_weights
    expected = (weights["order_id"] * 1 / 3 + sum(w * 2 / 3 for f, w in weights.items() if f != "order_id")) / sum(
        weights.values()
    )
    assert result["field_accuracy"] == pytest.approx(expected)
    assert result["must_never_failures"] == 2


def test_tool_metrics(cards):
    card = cards["support_tools"]
    call = {"tool": "track_parcel", "arguments": {"order_id": "A12345"}}
    esc = {"tool": "escalate_to_human", "arguments": {"reason": "legal"}}
    frame = pd.DataFrame(
        {
            "id": ["1", "2", "3"],
            "text": ["", "", ""],
            "target": [json.dumps(call), json.dumps(call), json.dumps(esc)],
            "prediction": [
                json.dumps(call),
                json.dumps({"tool": "track_parcel", "arguments": {"order_id": "B1"}}),
                json.dumps(call),
            ],
        }
    )
    result = metrics.evaluate(card, frame)
    assert result["tool_accuracy"] == pytest.approx(2 / 3)
    assert result["argument_exact_match"] == pytest.approx(1 / 3)
    assert result["invalid_call_rate"] == pytest.approx(1 / 3)
    assert result["must_never_failures"] == 1
    assert result["cost_weighted_error"] == pytest.approx(10 / 3)


def test_drafting_metrics(cards):
    card = cards["reply_drafting"]
    frame = pd.DataFrame(
        {
            "id": ["1", "2"],
            "text": ["Where is A12345? Ana"] * 2,
            "target": [GOOD, GOOD],
            "prediction": [GOOD, "Unfortunately no."],
        }
    )
    result = metrics.evaluate(card, frame)
    assert result["rule_pass_rate"] == pytest.approx(0.5)
    assert result["per_rule"]["no_forbidden_phrases"]["pass_rate"] == pytest.approx(0.5)
    assert result["must_never_failures"] == 1
    assert result["reference_similarity"] == pytest.approx(0.5, abs=1e-6)  # one identical, one disjoint
    checks = {c.target: c.met for c in metrics.check_targets(card, result)}
    assert checks == {"rule_pass_rate": False, "must_never_failures": False}
