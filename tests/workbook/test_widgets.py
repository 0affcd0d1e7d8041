"""The job-card form goes through the same validation as a YAML card; the review browser as a learner uses it."""

import pytest
from conftest import EXAMPLE

from tunebook.card import schema as job
from tunebook.define import approach
from tunebook.errors import JobCardError
from tunebook.workbook import widgets

VALUES = {
    "name": "triage",
    "task_kind": "classification",
    "description": "Route tickets.",
    "labels": "billing: money questions\nshipping: where is my parcel\n",
    "data_path": str(EXAMPLE / "tickets.csv"),
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


def _form_inputs(form):
    return {getattr(child, "description", None): child for child in form.children}


def test_save_button_writes_the_card_with_a_data_path_typed_from_the_notebook(tmp_path, monkeypatch, capsys):
    notebooks, runs = tmp_path / "notebooks", tmp_path / "runs" / "lab"
    (tmp_path / "data").mkdir()
    notebooks.mkdir()
    (tmp_path / "data" / "tickets.csv").write_text((EXAMPLE / "tickets.csv").read_text())
    monkeypatch.chdir(notebooks)  # JupyterLab runs a notebook in its own folder; paths are typed from there
    form = widgets.job_card_form(runs / "job_from_form.yaml")
    inputs = _form_inputs(form)
    inputs["name"].value, inputs["task"].value = VALUES["name"], VALUES["description"]
    inputs["labels"].value, inputs["data file"].value = VALUES["labels"], "../data/tickets.csv"
    for name, question in widgets.DECISION_QUESTIONS.items():
        inputs[question].value = VALUES[name]
    inputs["Validate and save"].click()
    saved = job.load_job_card(runs / "job_from_form.yaml")
    assert saved.label_names == ["billing", "shipping"]
    assert saved.data.path == str(tmp_path / "data" / "tickets.csv")  # the file typed, not one beside the card
    printed = capsys.readouterr().out  # the form's output area, outside a kernel
    assert f'JOB_CARD = "{runs / "job_from_form.yaml"}"' in printed  # what to do with the saved card


def test_the_form_flags_a_missing_or_empty_data_file(tmp_path):
    with pytest.raises(JobCardError, match=r"data file: nope.csv not found \(looked for"):
        widgets.card_from_form({**VALUES, "data_path": "nope.csv"}, tmp_path, tmp_path)
    (tmp_path / "empty.csv").write_text("id,text,label\n")
    with pytest.raises(JobCardError, match="empty.csv has no rows"):
        widgets.card_from_form({**VALUES, "data_path": "empty.csv"}, tmp_path, tmp_path)


def test_the_review_browser_starts_on_each_items_own_label_and_names_what_it_saved(tmp_path):
    from tunebook.data import examples as data

    card = widgets.card_from_form(VALUES)
    items = [
        {"kind": "suspected label error", "id": i, "row": n, "text": f"ticket {i}", "target": t, "context": ""}
        for n, (i, t) in enumerate((("A", "shipping"), ("B", "billing"), ("C", "shipping")), start=2)
    ]
    path = tmp_path / "decisions.jsonl"
    box = widgets.review_browser(items, card, path)
    view, new_label, buttons, status = box.children
    press = {b.description: b for b in buttons.children}
    assert new_label.value == "shipping" and "id A" in view.value
    press["relabel"].click()  # a hasty relabel that chose nothing
    assert "already labelled" in status.value and not path.exists() and "id A" in view.value
    new_label.value = "billing"
    press["relabel"].click()
    assert "saved relabel (shipping → billing) for id A" in status.value and "now showing 2 / 3, id B" in status.value
    assert new_label.value == "billing" and "id B" in view.value  # B's own label, not the last choice
    press["drop"].click()
    assert new_label.value == "shipping" and "saved drop" in status.value and "id C" in status.value
    assert data.load_decisions(path) == {
        "A": {"id": "A", "action": "relabel", "target": "billing"},
        "B": {"id": "B", "action": "drop"},
    }
    press["◀ previous"].click()
    press["◀ previous"].click()
    assert "id A" in view.value and new_label.value == "billing"  # a decided relabel shows its new label


def test_mistake_browser_pages_through_rows():
    import pandas as pd

    from tunebook.workbook import widgets

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
