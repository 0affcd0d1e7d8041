"""Extraction: one JSON record that validates against the card's schema, scored field by field."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd

from tunebook.card.answers import parse_json, schema_errors
from tunebook.card.schema import JobCard, schema_problems
from tunebook.card.tasks.base import TaskKind, compact_schema, rate, register_kind


@register_kind
class Extraction(TaskKind):
    """The answer is a JSON record; its metrics are validity, weighted field accuracy, record match and slot F1."""

    name = "extraction"
    primary = "field_accuracy"
    json_answer = True
    max_new_tokens = 96

    def card_problems(self, card: JobCard) -> list[str]:
        if not card.output_schema:
            return ["output_schema: an extraction job needs a JSON Schema (inline, or output_schema_file: path)"]
        problems = [f"output_schema: {p}" for p in schema_problems(card.output_schema)]
        fields = set(card.output_schema.get("properties", {}))
        if not problems and (card.output_schema.get("type") != "object" or not fields):
            problems.append("output_schema: must describe an object with properties (the fields to extract)")
        problems += [
            f"field_weights.{name}: not a field of output_schema {sorted(fields)}"
            for name in card.field_weights
            if name not in fields
        ]
        for i, rule in enumerate(card.must_never):
            if rule.field not in fields:
                problems.append(
                    f"must_never[{i}].field: '{rule.field}' is not a field of output_schema {sorted(fields)}"
                )
        return problems

    def prompt_block(self, card: JobCard) -> list[str]:
        return [
            "Answer with one JSON object, on one line, that validates against this JSON Schema:",
            json.dumps(compact_schema(card.output_schema), ensure_ascii=False),
        ]

    def overview(self, card: JobCard) -> list[dict]:
        required = set(card.output_schema.get("required", []))
        return [
            {
                "field": name,
                "type": spec.get("type"),
                "enum": spec.get("enum"),
                "required": name in required,
                "weight": card.field_weights.get(name, 1.0),
                "description": spec.get("description", ""),
            }
            for name, spec in card.output_schema.get("properties", {}).items()
        ]

    def canonical(self, card: JobCard, value) -> str:
        """JSON with the schema's field order."""
        if isinstance(value, dict):
            order = self.fields(card)
            value = {k: value[k] for k in sorted(value, key=lambda k: order.index(k) if k in order else len(order))}
        return json.dumps(value, ensure_ascii=False)

    def check_answer(self, card: JobCard, value) -> list[str]:
        return schema_errors(value, card.output_schema)

    def fields(self, card: JobCard) -> list[str]:
        return list(card.output_schema.get("properties", {}))

    def _records(self, card: JobCard, predictions: pd.DataFrame) -> list[tuple[dict, dict, str | None, object]]:
        """Per example: the target record, the predicted record ({} if not an object), the parse error and the
        parsed value as it came."""
        found = []
        for r in predictions.itertuples():
            value, error = parse_json(r.prediction)
            found.append((json.loads(r.target), value if isinstance(value, dict) else {}, error, value))
        return found

    def _hits(self, card: JobCard, records: list) -> dict[str, np.ndarray]:
        return {
            f: np.array([f in value and value[f] == truth.get(f) for truth, value, _, _ in records], dtype=bool)
            for f in self.fields(card)
        }

    def _usable(self, card: JobCard, records: list) -> np.ndarray:
        return np.array(
            [error is None and not schema_errors(raw, card.output_schema) for _, _, error, raw in records], dtype=bool
        )

    @staticmethod
    def _whole(hits: dict[str, np.ndarray], n: int) -> np.ndarray:
        return np.logical_and.reduce(list(hits.values())) if hits else np.ones(n, dtype=bool)

    def field_hits(self, card: JobCard, predictions: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per field and example: is the field present and equal to the target?"""
        return self._hits(card, self._records(card, predictions))

    def correct(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return self._whole(self.field_hits(card, predictions), len(predictions))

    def parts(self, card: JobCard, predictions: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        every = np.ones(len(predictions), dtype=bool)
        return {f: (every, hit) for f, hit in self.field_hits(card, predictions).items()}

    def usable(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return self._usable(card, self._records(card, predictions))

    def metrics(self, card: JobCard, predictions: pd.DataFrame) -> dict:
        """JSON validity, schema validity, exact match per field (and weighted), whole-record exact match, slot F1."""
        fields = self.fields(card)
        weights = {f: card.field_weights.get(f, 1.0) for f in fields}
        records = self._records(card, predictions)
        hits = self._hits(card, records)
        n = len(predictions)
        slots = {"true_positives": 0, "predicted": 0, "expected": 0}
        must_never = []
        for i, (row, (truth, value, _, _)) in enumerate(zip(predictions.itertuples(), records)):
            for f in fields:
                slots["predicted"] += value.get(f) is not None
                slots["expected"] += truth.get(f) is not None
                slots["true_positives"] += bool(hits[f][i]) and truth.get(f) is not None
            must_never += [
                {
                    "id": str(row.id),
                    "field": rule.field,
                    "target": truth.get(rule.field),
                    "prediction": value.get(rule.field),
                }
                for rule in card.must_never
                if not hits[rule.field][i]
            ]
        field_acc = {f: rate(hits[f]) for f in fields}
        total = sum(weights.values())
        precision = slots["true_positives"] / slots["predicted"] if slots["predicted"] else 0.0
        recall = slots["true_positives"] / slots["expected"] if slots["expected"] else 0.0
        return self._frame(
            [
                "n",
                "json_validity",
                "schema_validity",
                "field_accuracy",
                "record_exact_match",
                "slot_f1",
                "must_never_failures",
            ],
            n,
            must_never,
            json_validity=rate([error is None for _, _, error, _ in records]),
            schema_validity=rate(self._usable(card, records)),
            field_accuracy=sum(weights[f] * field_acc[f] for f in fields) / total if total else 0.0,
            record_exact_match=rate(self._whole(hits, n)),
            # the slot-filling view: only fields that hold a value count, so answering null everywhere scores 0
            slot_precision=precision,
            slot_recall=recall,
            slot_f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            per_field={f: {"exact_match": field_acc[f], "weight": weights[f]} for f in fields},
        )

    def trivial_answer(self, card: JobCard, train: pd.DataFrame) -> str:
        """Every field at its most frequent training value (usually null)."""
        records = [json.loads(t) for t in train["target"]]
        common = {f: Counter(json.dumps(r.get(f)) for r in records).most_common(1)[0][0] for f in self.fields(card)}
        return self.canonical(card, {f: json.loads(v) for f, v in common.items()})
