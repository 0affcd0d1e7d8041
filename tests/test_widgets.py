"""The job-card form goes through the same validation as a YAML card."""

import pytest

from tunebook import approach, job, widgets
from tunebook.errors import JobCardError

VALUES = {
    "name": "triage",
    "task_kind": "classification",
    "description": "Route tickets.",
    "labels": "billing: money questions\nshipping: where is my parcel\n",
    "data_path": "tickets.csv",
    "extra_yaml": "",
    **{name: True for name in widgets.DECISION_QUESTIONS},
    "prompting_solves_most": False,
}


def test_form_values_make_a_valid_card():
    card = widgets.card_from_form(VALUES)
    assert card.label_names == ["billing", "shipping"]
    assert card.labels[1].definition == "where is my parcel"
    assert approach.decide_approach(card).approach == "fine-tuning"


def test_form_problems_name_the_field():
    with pytest.raises(JobCardError) as caught:
        widgets.card_from_form({**VALUES, "labels": "billing: x\nbilling: y"})
    assert caught.value.problems == ["labels: duplicate name(s) ['billing']; each must appear once"]
    with pytest.raises(JobCardError) as caught:
        widgets.card_from_form({**VALUES, "extra_yaml": "targets: {macro_f1: 2}"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["targets.macro_f1"]


def test_save_button_writes_the_card(tmp_path):
    form = widgets.job_card_form(tmp_path / "job.yaml")
    inputs = {getattr(child, "description", None): child for child in form.children}
    inputs["name"].value, inputs["task"].value = VALUES["name"], VALUES["description"]
    inputs["labels"].value, inputs["data file"].value = VALUES["labels"], VALUES["data_path"]
    for name, question in widgets.DECISION_QUESTIONS.items():
        inputs[question].value = VALUES[name]
    inputs["Validate and save"].click()
    saved = job.parse_job_card(__import__("yaml").safe_load((tmp_path / "job.yaml").read_text()))
    assert saved.label_names == ["billing", "shipping"]


def test_mistake_browser_pages_through_rows():
    import pandas as pd

    from tunebook import widgets

    rows = pd.DataFrame(
        {
            "id": ["A", "B"],
            "text": ["late parcel", "double charge"],
            "target": ["shipping", "billing"],
            "prediction_baseline": ["billing", "billing"],
            "prediction_tuned": ["shipping", "refund"],
            "flip": ["fixed by tuning", "broken by tuning"],
        }
    )
    box = widgets.mistake_browser(rows)
    view, buttons = box.children
    assert "1 / 2" in view.value and "late parcel" in view.value and "fixed by tuning" in view.value
    buttons.children[1].click()
    assert "2 / 2" in view.value and "double charge" in view.value
    assert "Nothing to show" in widgets.mistake_browser(rows.head(0)).value
