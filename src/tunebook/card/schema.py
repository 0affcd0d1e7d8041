"""The job card: what behaviour must become reliable, and whether fine-tuning is the right tool."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunebook.errors import JobCardError, TunebookError

TASK_KINDS = ("classification", "extraction", "tool_selection", "drafting")
# Each kind's checks of a card, registered by its module in ``tasks`` (imported with this package).
_CARD_CHECKS: dict[str, Callable[[JobCard], list[str]]] = {}


def register_card_check(kind: str, check: Callable[[JobCard], list[str]]) -> None:
    """Make ``check`` (a card -> its problems) part of validating every card of task kind ``kind``."""
    _CARD_CHECKS[kind] = check


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
    target_column: str = "target"
    id_column: str | None = "id"
    tags_column: str | None = "tags"


class MustNever(_Strict):
    """A failure that must never happen.

    classification / tool_selection: predicting ``predicted`` ('*' = anything else) when the truth is ``actual``;
    extraction: a wrong value in ``field``; drafting: breaking rule ``rule``.
    """

    actual: str | None = None
    predicted: str = "*"
    field: str | None = None
    rule: str | None = None
    reason: str = ""


class Tool(_Strict):
    """One tool of a tool-selection catalogue; ``parameters`` is a JSON Schema of its arguments."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: str = Field(min_length=1)
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})


class NamedPattern(_Strict):
    """A named regular expression used by a drafting rule."""

    name: str = Field(min_length=1)
    regex: str = Field(min_length=1)


class DraftingRules(_Strict):
    """Tone and policy rules a draft must pass, each checkable by code."""

    required_patterns: list[NamedPattern] = Field(default_factory=list, description="Each must match the draft.")
    echo_patterns: list[NamedPattern] = Field(
        default_factory=list, description="A match in the input must reappear in the draft."
    )
    forbidden_phrases: list[str] = Field(
        default_factory=list, description="Case-insensitive phrases the draft must not contain."
    )
    min_words: int | None = Field(default=None, ge=0)
    max_words: int | None = Field(default=None, ge=1)
    closing_line: str | None = Field(default=None, description="The draft's last line, exactly.")
    plain_text: bool = Field(default=True, description="No markdown: headings, bullets, emphasis, links.")


MonitorSignal = Literal[
    "length_p_value",
    "unseen_word_increase",
    "text_auc",
    "prediction_p_value",
    "prediction_psi",
    "confidence_p_value",
    "estimated_accuracy_drop",
    "labelled_metric_drop",
    "labelled_metric_p_value",
    "must_never_p_value",
    "top_score_p_value",
    "no_passage_increase",
    "knowledge_mismatch",
]


class MonitorRule(_Strict):
    """One alert rule: the signal it watches, the threshold that fires it, and how many of the latest logged
    predictions it looks at. p-values fire below their threshold, every other signal above it."""

    signal: MonitorSignal
    threshold: float
    window: int = Field(default=500, ge=10, description="the latest logged predictions the rule looks at")


class Monitoring(_Strict):
    """How 06_monitor watches the released model: rules that replace the defaults of the same signal."""

    rules: list[MonitorRule] = Field(default_factory=list)
    min_window: int = Field(default=30, ge=5, description="fewer logged predictions than this raise no alert")


RETRIEVER_CHOICES = ("auto", "bm25", "dense", "hybrid")


class KnowledgeSpec(_Strict):
    """The documents the answers must follow (a help centre, a policy, a price list), read at runtime.

    Each file of ``documents`` (Markdown, plain text or HTML) is one article; its id comes from its front matter
    (``id:``) or its file name. Articles are split into passages of at most ``passage_words`` words at paragraph
    and sentence boundaries; ``k`` passages go into each prompt.
    """

    documents: str = Field(min_length=1, description="Folder of articles, relative to the card's folder.")
    fresh_documents: str | None = Field(
        default=None, description="A later version of the same documents, for the freshness test."
    )
    passage_words: int = Field(default=120, ge=20, le=1000)
    retriever: Literal["auto", "bm25", "dense", "hybrid"] = Field(
        default="auto", description="auto: the best on the validation split by recall@k, then MRR."
    )
    k: int = Field(default=3, ge=1, le=20, description="Passages in each prompt.")
    source_column: str = Field(default="source", description="Data column: the article id(s) each answer rests on.")
    facts_column: str | None = Field(default="facts", description="Data column: key facts a right answer states.")
    fresh_facts_column: str | None = Field(
        default=None, description="Data column: the same key facts under fresh_documents ([] when removed)."
    )
    abstain_phrase: str = Field(
        min_length=1, description="What an answer says when the passages do not hold the answer (hand over)."
    )


class Targets(_Strict):
    """Success targets the tuned model must meet."""

    macro_f1: float | None = Field(default=None, ge=0, le=1)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    json_validity: float | None = Field(default=None, ge=0, le=1)
    schema_validity: float | None = Field(default=None, ge=0, le=1)
    field_accuracy: float | None = Field(default=None, ge=0, le=1)
    record_exact_match: float | None = Field(default=None, ge=0, le=1)
    tool_accuracy: float | None = Field(default=None, ge=0, le=1)
    argument_exact_match: float | None = Field(default=None, ge=0, le=1)
    max_invalid_call_rate: float | None = Field(default=None, ge=0, le=1)
    rule_pass_rate: float | None = Field(default=None, ge=0, le=1)
    fact_accuracy: float | None = Field(default=None, ge=0, le=1)
    groundedness: float | None = Field(default=None, ge=0, le=1)
    citation_validity: float | None = Field(default=None, ge=0, le=1)
    abstention: float | None = Field(default=None, ge=0, le=1)
    must_never_failures: int = Field(default=0, ge=0)


class DecisionAnswers(_Strict):
    """The five questions that decide between prompting, RAG and fine-tuning."""

    behaviour_not_knowledge: bool = Field(
        description="Is the gap a behaviour (format, judgement, style) rather than missing facts?"
    )
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
    output_schema: dict | None = Field(default=None, description="extraction: JSON Schema of the output object.")
    field_weights: dict[str, float] = Field(
        default_factory=dict, description="extraction: weight of each field's errors."
    )
    tools: list[Tool] = Field(default_factory=list, description="tool_selection: the tool catalogue.")
    rules: DraftingRules | None = Field(default=None, description="drafting: the rules a draft must pass.")
    data: DataSpec
    error_costs: dict[str, dict[str, float]] = Field(default_factory=dict)
    must_never: list[MustNever] = Field(default_factory=list)
    targets: Targets = Field(default_factory=Targets)
    decision: DecisionAnswers
    monitoring: Monitoring = Field(default_factory=Monitoring)
    knowledge: KnowledgeSpec | None = Field(default=None, description="Documents retrieved into each prompt.")

    @model_validator(mode="after")
    def _check_kind(self) -> JobCard:
        problems = _CARD_CHECKS[self.task_kind](self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def choices(self) -> list[str]:
        """The closed set of answers scored by likelihood: labels, or tool names."""
        return [tool.name for tool in self.tools] if self.task_kind == "tool_selection" else self.label_names

    @property
    def label_names(self) -> list[str]:
        """The allowed labels, in card order."""
        return [label.name for label in self.labels]

    @property
    def target_column(self) -> str:
        """The data column holding the target: the label column for classification, else the target column."""
        return self.data.label_column if self.task_kind == "classification" else self.data.target_column

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
        return any(r.actual in (true, "*") and r.predicted in (predicted, "*") for r in self.must_never if r.actual)


def schema_problems(schema: dict) -> list[str]:
    """Problems that make ``schema`` an invalid JSON Schema (empty when it is valid)."""
    # deferred: jsonschema loads only for a card that carries a JSON Schema (extraction, tools)
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as error:
        where = "/".join(str(p) for p in error.path) or "(root)"
        return [f"invalid JSON Schema at {where}: {error.message}"]
    return []


def rule_names(rules: DraftingRules) -> list[str]:
    """Names of every check a drafting rule set implies, in report order."""
    names = [f"required:{p.name}" for p in rules.required_patterns] + [f"echo:{p.name}" for p in rules.echo_patterns]
    if rules.forbidden_phrases:
        names.append("no_forbidden_phrases")
    if rules.min_words is not None or rules.max_words is not None:
        names.append("length")
    if rules.closing_line:
        names.append("closing_line")
    if rules.plain_text:
        names.append("plain_text")
    return names


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


_FILE_FIELDS = {"output_schema_file": "output_schema", "tools_file": "tools"}


def _inline_files(data: dict, card_path: Path) -> dict:
    """Replace ``output_schema_file`` / ``tools_file`` (paths relative to the card) with their JSON content."""
    data = dict(data)
    for file_field, field in _FILE_FIELDS.items():
        if file_field not in data:
            continue
        source = card_path.parent / str(data.pop(file_field))
        if field in data:
            raise JobCardError(str(card_path), [f"{file_field}: give either {field} or {file_field}, not both"])
        try:
            data[field] = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobCardError(str(card_path), [f"{file_field}: file not found: {source}"]) from None
        except json.JSONDecodeError as error:
            raise JobCardError(str(card_path), [f"{file_field}: {source} is not valid JSON ({error})"]) from None
    return data


def load_job_card(path: str | Path) -> JobCard:
    """Read and validate ``job.yaml``; the data path is resolved relative to the card's folder."""
    path = Path(path)
    if not path.is_file():
        raise TunebookError(f"job card not found: {path}. Pass the path of a job.yaml (see examples/*/job.yaml).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise JobCardError(str(path), [f"not valid YAML: {error}"]) from None
    if isinstance(data, dict):
        data = _inline_files(data, path)
    card = parse_job_card(data, str(path))
    card.data.path = _beside(path, card.data.path)
    if card.knowledge is not None:
        card.knowledge.documents = _beside(path, card.knowledge.documents)
        if card.knowledge.fresh_documents:
            card.knowledge.fresh_documents = _beside(path, card.knowledge.fresh_documents)
    return card


def _beside(card_path: Path, path: str) -> str:
    """``path`` resolved against the card's folder unless it is absolute."""
    return path if Path(path).is_absolute() else str((card_path.parent / path).resolve())


def save_job_card(card: JobCard, path: str | Path) -> Path:
    """Write the card as YAML and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return path


def card_hash(card: JobCard) -> str:
    """Content hash of what the card asks of a model (independent of YAML formatting; alert rules and the documents'
    folders are left out: retuning how a release is watched, or updating its documents, does not make its adapter
    another job's)."""
    fields = card.model_dump(mode="json", exclude={"monitoring"})
    if fields["knowledge"] is None:
        del fields["knowledge"]  # cards from before the knowledge layer keep their hash
    else:  # where the documents are read from is not what the job asks: a knowledge update keeps the job
        fields["knowledge"] = {
            k: v for k, v in fields["knowledge"].items() if k not in ("documents", "fresh_documents")
        }
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()
