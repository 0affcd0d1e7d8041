"""The job card: what behaviour must become reliable, and whether fine-tuning is the right tool."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunebook.errors import JobCardError, TunebookError

TASK_KINDS = ("classification", "extraction", "tool_selection", "drafting")
# Task kinds this version of the workbook can carry through training and evaluation.
RUNNABLE_TASK_KINDS = ("classification",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Label(_Strict):
    """One allowed label and the one-line definition a reviewer applies."""

    name: str = Field(min_length=1)
    definition: str = Field(min_length=1)


class DataSpec(_Strict):
    """Where the examples live and which columns hold what."""

    path: str
    text_column: str = "text"
    label_column: str = "label"
    id_column: str | None = "id"
    tags_column: str | None = "tags"


class MustNever(_Strict):
    """A failure that must never happen: predicting ``predicted`` ('*' = anything else) when the truth is ``actual``."""

    actual: str
    predicted: str = "*"
    reason: str = ""


class Targets(_Strict):
    """Success targets the tuned model must meet."""

    macro_f1: float | None = Field(default=None, ge=0, le=1)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    must_never_failures: int = Field(default=0, ge=0)


class DecisionAnswers(_Strict):
    """The five questions that decide between prompting, RAG and fine-tuning."""

    behaviour_not_knowledge: bool = Field(description="Is the gap a behaviour (format, judgement, style) rather than missing facts?")
    repeats_enough: bool = Field(description="Does the task repeat often enough to justify training?")
    examples_collectable: bool = Field(description="Can examples of success and failure be collected?")
    prompting_solves_most: bool = Field(description="Would better prompting alone solve most of it?")
    can_evaluate: bool = Field(description="Can it be evaluated on real cases?")


class JobCard(_Strict):
    """A validated job card (``job.yaml``)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    task_kind: Literal["classification", "extraction", "tool_selection", "drafting"]
    description: str = Field(min_length=1)
    instructions: str = Field(default="", description="Extra instructions for the system prompt.")
    labels: list[Label] = Field(default_factory=list)
    escalate_label: str | None = None
    data: DataSpec
    error_costs: dict[str, dict[str, float]] = Field(default_factory=dict)
    must_never: list[MustNever] = Field(default_factory=list)
    targets: Targets = Field(default_factory=Targets)
    decision: DecisionAnswers

    @model_validator(mode="after")
    def _check_labels(self) -> "JobCard":
        problems = []
        names = [label.name for label in self.labels]
        if self.task_kind == "classification" and not names:
            problems.append("labels: a classification job needs at least two labels, found none")
        elif self.task_kind == "classification" and len(names) < 2:
            problems.append(f"labels: a classification job needs at least two labels, found {names}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"labels: duplicate label(s) {duplicates}; each label must appear once")
        known = set(names)
        if self.escalate_label is not None and self.escalate_label not in known:
            problems.append(f"escalate_label: '{self.escalate_label}' is not one of the labels {names}")
        for true, row in self.error_costs.items():
            if true not in known:
                problems.append(f"error_costs.{true}: '{true}' is not one of the labels {names}")
            for predicted, cost in row.items():
                if predicted != "*" and predicted not in known:
                    problems.append(f"error_costs.{true}.{predicted}: '{predicted}' is not one of the labels {names} (or '*')")
                if cost < 0:
                    problems.append(f"error_costs.{true}.{predicted}: cost must be >= 0, got {cost}")
        for i, rule in enumerate(self.must_never):
            for field in ("actual", "predicted"):
                value = getattr(rule, field)
                if value != "*" and value not in known:
                    problems.append(f"must_never[{i}].{field}: '{value}' is not one of the labels {names}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def label_names(self) -> list[str]:
        """The allowed labels, in card order."""
        return [label.name for label in self.labels]

    def error_cost(self, true: str, predicted: str) -> float:
        """Cost of predicting ``predicted`` when the truth is ``true`` (0 when right, 1 by default)."""
        if true == predicted:
            return 0.0
        row = self.error_costs.get(true, {})
        return float(row.get(predicted, row.get("*", 1.0)))

    def is_must_never(self, true: str, predicted: str) -> bool:
        """Whether this (truth, prediction) pair is one of the card's must-never failures."""
        if true == predicted:
            return False
        return any(r.actual in (true, "*") and r.predicted in (predicted, "*") for r in self.must_never)


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        if item["type"] == "literal_error" and item["loc"] == ("task_kind",):
            message = f"unknown task kind {item['input']!r}; use one of {', '.join(TASK_KINDS)}"
        prefix = f"{where}: " if item["loc"] else ""
        problems.extend(prefix + line for line in message.split("\n"))
    return problems


def parse_job_card(data: object, source: str = "<job card>") -> JobCard:
    """Validate a job card given as a mapping; raise JobCardError listing every problem."""
    if not isinstance(data, dict):
        raise JobCardError(source, ["the card must be a YAML mapping of fields (name, task_kind, ...)"])
    try:
        return JobCard.model_validate(data)
    except ValidationError as error:
        raise JobCardError(source, _problems(error)) from None


def load_job_card(path: str | Path) -> JobCard:
    """Read and validate ``job.yaml``; the data path is resolved relative to the card's folder."""
    path = Path(path)
    if not path.is_file():
        raise TunebookError(f"job card not found: {path}. Pass the path of a job.yaml (see examples/*/job.yaml).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise JobCardError(str(path), [f"not valid YAML: {error}"]) from None
    card = parse_job_card(data, str(path))
    data_path = Path(card.data.path)
    if not data_path.is_absolute():
        card.data.path = str((path.parent / data_path).resolve())
    return card


def save_job_card(card: JobCard, path: str | Path) -> Path:
    """Write the card as YAML and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def card_hash(card: JobCard) -> str:
    """Content hash of the card (independent of YAML formatting)."""
    blob = json.dumps(card.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def require_runnable(card: JobCard) -> None:
    """Raise a clear error when the card's task kind cannot be trained by this version."""
    if card.task_kind not in RUNNABLE_TASK_KINDS:
        raise TunebookError(
            f"task_kind '{card.task_kind}' is a valid job, but this version of tunebook trains and evaluates "
            f"only {', '.join(RUNNABLE_TASK_KINDS)} jobs."
        )


class Decision(BaseModel):
    """The recommended approach and the reasons for it."""

    approach: Literal["prompting", "rag", "fine-tuning", "hybrid", "not-yet"]
    reasons: list[str]
    proceed_to_training: bool


def decide_approach(card: JobCard) -> Decision:
    """Turn the card's five answers into a recommendation with reasons."""
    a = card.decision
    if not a.can_evaluate:
        return Decision(
            approach="not-yet",
            reasons=["It cannot be evaluated on real cases yet: build a labelled test set first; "
                     "without one no approach can be shown to work."],
            proceed_to_training=False,
        )
    reasons: list[str] = []
    if not a.behaviour_not_knowledge:
        reasons.append("The gap is missing knowledge: retrieval supplies facts at runtime, training does not store them reliably.")
        if a.repeats_enough and a.examples_collectable and not a.prompting_solves_most:
            reasons.append("The task also repeats with collectable examples that prompting does not fix: tune the behaviour on top of retrieval.")
            return Decision(approach="hybrid", reasons=reasons, proceed_to_training=True)
        return Decision(approach="rag", reasons=reasons, proceed_to_training=False)
    if a.prompting_solves_most:
        reasons.append("Better prompting is expected to solve most of it: prompting steers at runtime and costs no training.")
        return Decision(approach="prompting", reasons=reasons, proceed_to_training=False)
    if not a.repeats_enough:
        reasons.append("The task does not repeat enough to repay collecting data and training.")
        return Decision(approach="prompting", reasons=reasons, proceed_to_training=False)
    if not a.examples_collectable:
        reasons.append("Examples of success and failure cannot be collected, so there is nothing to train on.")
        return Decision(approach="prompting", reasons=reasons, proceed_to_training=False)
    reasons += [
        "The gap is behaviour (judgement, format, consistency), which fine-tuning changes before runtime.",
        "The task repeats and examples of success and failure can be collected.",
        "Prompting alone is not expected to be enough; the baseline notebook measures that claim.",
        "It can be evaluated on real cases, so the tuned model can be held to the card's targets.",
    ]
    return Decision(approach="fine-tuning", reasons=reasons, proceed_to_training=True)
