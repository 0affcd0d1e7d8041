"""ipywidgets views for JupyterLab; headless (papermill) they render as inert widgets and change nothing."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunebook.errors import JobCardError
from tunebook.job import TASK_KINDS, DecisionAnswers, JobCard, parse_job_card, save_job_card

DECISION_QUESTIONS = {name: field.description for name, field in DecisionAnswers.model_fields.items()}


def card_from_form(values: dict) -> JobCard:
    """Build and validate a job card from the form's plain values (the same validation as a YAML card)."""
    data = {
        "name": values["name"].strip(),
        "task_kind": values["task_kind"],
        "description": values["description"].strip(),
        "data": {"path": values["data_path"].strip()},
        "decision": {name: bool(values[name]) for name in DECISION_QUESTIONS},
    }
    labels = []
    for line in values.get("labels", "").splitlines():
        if line.strip():
            name, _, definition = line.partition(":")
            labels.append({"name": name.strip(), "definition": definition.strip()})
    if labels:
        data["labels"] = labels
    extra = yaml.safe_load(values.get("extra_yaml") or "") or {}
    if not isinstance(extra, dict):
        raise JobCardError("the form", ["extra fields: must be YAML mapping (e.g. output_schema: {...})"])
    data.update(extra)
    return parse_job_card(data, "the form")


def job_card_form(path: str | Path):
    """A form that fills in a job card and writes it to ``path`` when it validates."""
    import ipywidgets as w

    fields = {
        "name": w.Text(description="name", placeholder="support_triage"),
        "task_kind": w.Dropdown(options=TASK_KINDS, description="task kind"),
        "description": w.Textarea(description="task", placeholder="What the model must do, in one or two sentences."),
        "labels": w.Textarea(description="labels", placeholder="one per line: name: one-line definition"),
        "data_path": w.Text(description="data file", placeholder="tickets.csv"),
        "extra_yaml": w.Textarea(description="more (YAML)", placeholder="output_schema / tools / rules / targets / error_costs"),
    }
    for name, question in DECISION_QUESTIONS.items():
        fields[name] = w.Checkbox(description=question, indent=False, layout=w.Layout(width="auto"))
    save, out = w.Button(description="Validate and save", button_style="primary"), w.Output()

    def on_save(_):
        out.clear_output()
        with out:
            try:
                card = card_from_form({name: widget.value for name, widget in fields.items()})
            except JobCardError as error:
                print(error)
                return
            print(f"saved {save_job_card(card, path)}")

    save.on_click(on_save)
    return w.VBox([*fields.values(), save, out])
