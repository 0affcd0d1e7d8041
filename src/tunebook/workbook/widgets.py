"""ipywidgets views for JupyterLab; headless (papermill) they render as inert widgets and change nothing."""

from __future__ import annotations

import html
from pathlib import Path

import yaml

from tunebook.card.schema import TASK_KINDS, DecisionAnswers, JobCard, parse_job_card, save_job_card
from tunebook.clean.audit import review_items
from tunebook.data.examples import load_table, save_decisions
from tunebook.errors import DataError, JobCardError

DECISION_QUESTIONS = {name: field.description for name, field in DecisionAnswers.model_fields.items()}


def card_from_form(values: dict, here: str | Path = ".", card_folder: str | Path = ".") -> JobCard:
    """Build and validate a job card from the form's plain values (the same validation as a YAML card); the data
    file is stored as an absolute path, read relative to ``here`` (where the learner typed it) or the card's folder."""
    data = {
        "name": values["name"].strip(),
        "task_kind": values["task_kind"],
        "description": values["description"].strip(),
        "data": {"path": _data_file(values["data_path"].strip(), Path(here), Path(card_folder))},
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


def _data_file(typed: str, here: Path, card_folder: Path) -> str:
    """The typed data file as an absolute path; a file that is missing or has no rows is named in the error."""

    if not typed:
        raise JobCardError("the form", ["data file: empty; type the path of your CSV, JSONL or Parquet file"])
    candidates = (
        [Path(typed).expanduser()] if Path(typed).expanduser().is_absolute() else [here / typed, card_folder / typed]
    )
    found = next((c.resolve() for c in candidates if c.is_file()), None)
    if found is None:
        looked = " and ".join(str(c.resolve()) for c in candidates)
        raise JobCardError("the form", [f"data file: {typed} not found (looked for {looked})"])
    try:
        rows = len(load_table(found))
    except DataError as error:
        raise JobCardError("the form", [f"data file: {error}"]) from None
    if rows == 0:
        raise JobCardError("the form", [f"data file: {found} has no rows; point it at your labelled examples"])
    return str(found)


def job_card_form(path: str | Path):
    """A form that fills in a job card and writes it to ``path`` when it validates, then says how to use it."""
    # deferred: ipywidgets loads only where a widget is shown (JupyterLab), never under papermill
    import ipywidgets as w

    path = Path(path)
    fields = {
        "name": w.Text(description="name", placeholder="support_triage"),
        "task_kind": w.Dropdown(options=TASK_KINDS, description="task kind"),
        "description": w.Textarea(description="task", placeholder="What the model must do, in one or two sentences."),
        "labels": w.Textarea(description="labels", placeholder="one per line: name: one-line definition"),
        "data_path": w.Text(description="data file", placeholder="../examples/support_triage/tickets.csv"),
        "extra_yaml": w.Textarea(
            description="more (YAML)", placeholder="output_schema / tools / rules / targets / error_costs"
        ),
    }
    for name, question in DECISION_QUESTIONS.items():
        fields[name] = w.Checkbox(description=question, indent=False, layout=w.Layout(width="auto"))
    save, out = w.Button(description="Validate and save", button_style="primary"), w.Output()

    def on_save(_):
        out.clear_output()
        with out:
            try:
                card = card_from_form({name: widget.value for name, widget in fields.items()}, Path.cwd(), path.parent)
            except JobCardError as error:
                print(error)
                return
            saved = save_job_card(card, path).resolve()
            print(
                f'saved {saved}\nTo use it: set JOB_CARD = "{saved}" in this notebook\'s parameters cell and run '
                f"the notebook again (headless: tunebook run -p JOB_CARD={saved})."
            )

    save.on_click(on_save)
    return w.VBox([*fields.values(), save, out])


def record_decision(
    decisions: dict[str, dict], path: str | Path, item_id: str, action: str, target: str | None = None
) -> dict:
    """Record one review decision and rewrite the decisions file."""

    entry = {"id": item_id, "action": action}
    if action == "relabel":
        entry["target"] = target
    decisions[item_id] = entry
    save_decisions(decisions, path)
    return entry


def review_browser(found, card: JobCard, path: str | Path, decisions: dict[str, dict] | None = None):
    """Page through audit findings (an ``Audit`` or its review items); keep, relabel or drop each, saving every
    choice to ``path``. The new-label field starts on the shown item's own label, so a relabel is always a choice."""
    # deferred: as above
    import ipywidgets as w

    items = found if isinstance(found, list) else review_items(found)
    decisions = dict(decisions or {})
    if not items:
        return w.HTML("<b>Nothing to review:</b> no near duplicates, near conflicts or suspected label errors.")
    position = {"i": 0}
    view, status = w.HTML(), w.HTML()
    new_target = (
        w.Dropdown(options=card.choices, description="new label")
        if card.choices
        else w.Textarea(description="new target", layout=w.Layout(width="90%"))
    )
    buttons = {name: w.Button(description=name) for name in ("◀ previous", "keep", "relabel", "drop", "next ▶")}

    def show():
        item = items[position["i"]]
        done = decisions.get(item["id"], {}).get("action", "undecided")
        view.value = (
            f"<p><b>{position['i'] + 1} / {len(items)} · {item['kind']}</b> · row {item['row']} · id {html.escape(item['id'])} · "
            f"decision: <b>{done}</b></p><p>{html.escape(item['text'])}</p><p>target: <code>{html.escape(item['target'])}</code></p>"
            f"<p><i>{html.escape(item['context'])}</i></p>"
        )
        current = decisions.get(item["id"], {}).get("target", item["target"])
        if not card.choices or current in card.choices:
            new_target.value = current

    def move(step):
        position["i"] = (position["i"] + step) % len(items)
        show()

    def decide(action):
        item = items[position["i"]]
        target = new_target.value if action == "relabel" else None
        if action == "relabel" and target == item["target"]:
            status.value = (
                f"id {html.escape(item['id'])} is already labelled <code>{html.escape(str(target))}</code>: choose "
                "another label first, or press keep. Nothing saved."
            )
            return
        record_decision(decisions, path, item["id"], action, target)
        change = f" ({html.escape(item['target'])} → {html.escape(str(target))})" if target is not None else ""
        move(1)
        shown = items[position["i"]]
        status.value = (
            f"saved {action}{change} for id {html.escape(item['id'])} to {html.escape(str(path))}; now showing "
            f"{position['i'] + 1} / {len(items)}, id {html.escape(shown['id'])}"
        )

    buttons["◀ previous"].on_click(lambda _: move(-1))
    buttons["next ▶"].on_click(lambda _: move(1))
    for action in ("keep", "relabel", "drop"):
        buttons[action].on_click(lambda _, a=action: decide(a))
    show()
    return w.VBox([view, new_target, w.HBox(list(buttons.values())), status])


def mistake_browser(rows, columns: tuple[str, ...] = ("target", "prediction_baseline", "prediction_tuned", "flip")):
    """Page through examples side by side (text, truth, both models' answers); returns the widget."""
    # deferred: as above
    import ipywidgets as w

    if len(rows) == 0:
        return w.HTML("<b>Nothing to show.</b>")
    records = rows.to_dict(orient="records")
    position = {"i": 0}
    view = w.HTML()
    previous, following = w.Button(description="◀ previous"), w.Button(description="next ▶")

    def show():
        row = records[position["i"]]
        parts = "".join(
            f"<p><b>{c}</b>: <code>{html.escape(str(row.get(c, '')))}</code></p>" for c in columns if c in row
        )
        view.value = f"<p><b>{position['i'] + 1} / {len(records)}</b> · id {html.escape(str(row.get('id', '')))}</p><p>{html.escape(str(row.get('text', '')))}</p>{parts}"

    def move(step):
        position["i"] = (position["i"] + step) % len(records)
        show()

    previous.on_click(lambda _: move(-1))
    following.on_click(lambda _: move(1))
    show()
    return w.VBox([view, w.HBox([previous, following])])
