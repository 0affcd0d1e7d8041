"""What every task kind provides: its prompt block, how it is predicted, per-example correctness and its metrics."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tunebook.card.answers import parse_json
from tunebook.card.schema import JobCard, register_card_check

KINDS: dict[str, TaskKind] = {}


def register_kind(cls: type[TaskKind]) -> type[TaskKind]:
    """Class decorator: the kind answers ``task_of`` for its name and validates every card of that kind."""
    kind = cls()
    KINDS[cls.name] = kind
    register_card_check(cls.name, kind.card_problems)
    return cls


class TaskKind:
    """One kind of job (classification, extraction, tool selection, drafting), in one place.

    Its metrics and the paired statistics (``stats``) both rest on ``correct`` and ``parts``, so the two cannot
    disagree about which example was right.
    """

    name: ClassVar[str]
    primary: ClassVar[str]
    # The answer starts with one of the card's choices, scored rather than generated (then fitted with a decision rule).
    scores_choices: ClassVar[bool] = False
    # The chosen answer is the whole answer (classification), not a prefix the model continues (a tool's arguments).
    choice_is_answer: ClassVar[bool] = False
    # Generation stops at the end of the first JSON value.
    json_answer: ClassVar[bool] = False
    # New tokens allowed when no budget comes from the training answers.
    max_new_tokens: ClassVar[int] = 128

    def card_problems(self, card: JobCard) -> list[str]:
        """What is wrong with a card of this kind (its labels, schema, tools or rules); empty when it is valid."""
        raise NotImplementedError

    def prompt_block(self, card: JobCard) -> list[str]:
        """The system prompt's lines that describe the answer: labels, schema, tools or rules."""
        raise NotImplementedError

    def overview(self, card: JobCard) -> list[dict]:
        """One row per label, output field, tool or rule: what the model must produce."""
        raise NotImplementedError

    def canonical(self, card: JobCard, value: Any) -> str:
        """The one text form of a structured answer."""
        return json.dumps(value, ensure_ascii=False)

    def parse_target(self, card: JobCard, raw: Any, source: str) -> tuple[str, list[str]]:
        """A raw target from the data as its canonical text, with what is wrong with it against the card (a JSON
        answer by default: parsed, then checked by ``check_answer``)."""
        value, error = (
            (raw, None) if isinstance(raw, (dict, list)) else parse_json(str(raw)) if str(raw).strip() else ("", None)
        )
        if value == "":
            return "", []
        if error:
            return str(raw), [error]
        return self.canonical(card, value), self.check_answer(card, value)

    def check_answer(self, card: JobCard, value: Any) -> list[str]:
        """What is wrong with a parsed JSON answer (empty when it is valid)."""
        return []

    def stratum(self, card: JobCard, target: str) -> str:
        """The group a target is stratified by when splitting and counting: one group unless the kind has choices."""
        return "all"

    def correct(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        """Per example: is the whole answer right?"""
        raise NotImplementedError

    def parts(self, card: JobCard, predictions: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per class, tool, field or rule: which examples it covers, and whether each was right there.

        Classes and tools cover the examples whose target they are (right = fully correct, so the rate is recall);
        fields and rules cover every example (right = the field matches / the rule passes).
        """
        raise NotImplementedError

    def usable(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        """Per example: can a program use the output (a known label, schema-valid JSON, a valid call, a draft)?"""
        raise NotImplementedError

    def metrics(self, card: JobCard, predictions: pd.DataFrame) -> dict:
        """The kind's metrics for a frame of predictions (columns target and prediction)."""
        raise NotImplementedError

    def trivial_answer(self, card: JobCard, train: pd.DataFrame) -> str:
        """The answer that needs no model: by default the most frequent training target."""
        return Counter(train["target"]).most_common(1)[0][0]

    def _frame(self, headline_keys: list[str], n: int, must_never: list[dict], **figures) -> dict:
        return {
            "task_kind": self.name,
            "primary": self.primary,
            "headline_keys": headline_keys,
            "n": n,
            **figures,
            "must_never_failures": len(must_never),
            "must_never_examples": must_never,
        }


def label_figures(labels: list[str], y_true: list[str], y_pred: list[str]) -> dict:
    """Per-label precision, recall, F1 and support, their macro and weighted F1, and the confusion matrix over
    ``labels``, as scikit-learn computes them with ``zero_division=0`` (an answer outside ``labels`` counts as a miss).
    Written out because scikit-learn's input checks cost ~10 ms a call, and a bootstrap makes thousands of calls
    (``benchmarks/bootstrap_metrics.py``)."""
    index = {label: i for i, label in enumerate(labels)}
    t = np.array([index.get(v, -1) for v in y_true], dtype=int)
    p = np.array([index.get(v, -1) for v in y_pred], dtype=int)
    size = len(labels)
    both = (t >= 0) & (p >= 0)
    matrix = np.bincount(t[both] * size + p[both], minlength=size * size).reshape(size, size)
    support = np.bincount(t[t >= 0], minlength=size)
    predicted = np.bincount(p[p >= 0], minlength=size)
    hits = np.diag(matrix)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
        f1 = np.where(predicted + support > 0, 2 * hits / (predicted + support), 0.0)
    total = support.sum()
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "macro_f1": float(f1.mean()) if size else 0.0,
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "matrix": matrix,
    }


def per_label(labels: list[str], figures: dict) -> dict:
    """Precision, recall, F1 and support by label, as plain numbers."""
    return {
        label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(
            labels, figures["precision"], figures["recall"], figures["f1"], figures["support"]
        )
    }


def rate(values) -> float:
    """The share of true values (0.0 for none)."""
    values = np.asarray(values, dtype=bool)
    return float(values.mean()) if len(values) else 0.0


def compact_schema(schema: dict) -> dict:
    """A schema without annotations the model does not need ($schema, $id, title, examples)."""
    drop = {"$schema", "$id", "title", "examples", "$comment"}
    if isinstance(schema, dict):
        return {k: compact_schema(v) for k, v in schema.items() if k not in drop}
    if isinstance(schema, list):
        return [compact_schema(v) for v in schema]
    return schema


def choice_problems(card: JobCard, kind_field: str, names: list[str]) -> list[str]:
    """Problems with a closed set of answers (labels or tools): too few, repeated, or unknown in the costs and
    must-never rules."""
    problems = []
    if len(names) < 2:
        problems.append(
            f"{kind_field}: a {card.task_kind} job needs at least two {kind_field}, found {names or 'none'}"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"{kind_field}: duplicate name(s) {duplicates}; each must appear once")
    known = set(names)
    for true, row in card.error_costs.items():
        if true not in known:
            problems.append(f"error_costs.{true}: '{true}' is not one of the {kind_field} {names}")
        for predicted, cost in row.items():
            if predicted != "*" and predicted not in known:
                problems.append(
                    f"error_costs.{true}.{predicted}: '{predicted}' is not one of the {kind_field} {names} (or '*')"
                )
            if cost < 0:
                problems.append(f"error_costs.{true}.{predicted}: cost must be >= 0, got {cost}")
    for i, rule in enumerate(card.must_never):
        if rule.actual is None:
            problems.append(f"must_never[{i}].actual: name the true {kind_field[:-1]} this rule protects")
        for field in ("actual", "predicted"):
            value = getattr(rule, field)
            if value is not None and value != "*" and value not in known:
                problems.append(f"must_never[{i}].{field}: '{value}' is not one of the {kind_field} {names}")
    return problems
