"""Task metrics, computed the same way for the baseline and the tuned model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from tunebook.job import JobCard, rule_names
from tunebook.outputs import check_draft, check_tool_call, parse_json, schema_errors


def classification_metrics(card: JobCard, predictions: pd.DataFrame) -> dict:
    """Accuracy, macro/weighted F1, per-class figures, confusion matrix, cost-weighted error and must-never failures."""
    labels = card.label_names
    y_true, y_pred = predictions["target"].tolist(), predictions["prediction"].tolist()
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    costs = [card.error_cost(t, p) for t, p in zip(y_true, y_pred)]
    must_never = [
        {"id": str(row.id), "target": row.target, "prediction": row.prediction}
        for row in predictions.itertuples()
        if card.is_must_never(row.target, row.prediction)
    ]
    return {
        "task_kind": "classification",
        "primary": "macro_f1",
        "headline_keys": ["n", "accuracy", "macro_f1", "weighted_f1", "cost_weighted_error", "must_never_failures"],
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": {"labels": labels, "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
        "cost_weighted_error": float(sum(costs) / len(costs)) if costs else 0.0,
        "must_never_failures": len(must_never),
        "must_never_examples": must_never,
    }


def extraction_metrics(card: JobCard, predictions: pd.DataFrame) -> dict:
    """JSON validity, schema validity, exact match per field (and weighted), whole-record exact match."""
    fields = list(card.output_schema.get("properties", {}))
    weights = {f: card.field_weights.get(f, 1.0) for f in fields}
    valid_json, valid_schema, record_match, must_never = [], [], [], []
    per_field = {f: [] for f in fields}
    slots = {"true_positives": 0, "predicted": 0, "expected": 0}
    for row in predictions.itertuples():
        truth = json.loads(row.target)
        value, error = parse_json(row.prediction)
        valid_json.append(error is None)
        valid_schema.append(error is None and not schema_errors(value, card.output_schema))
        value = value if isinstance(value, dict) else {}
        hits = {f: f in value and value[f] == truth.get(f) for f in fields}
        for f in fields:
            slots["predicted"] += value.get(f) is not None
            slots["expected"] += truth.get(f) is not None
            slots["true_positives"] += hits[f] and truth.get(f) is not None
        for f in fields:
            per_field[f].append(hits[f])
        record_match.append(all(hits.values()))
        for rule in card.must_never:
            if not hits[rule.field]:
                must_never.append(
                    {
                        "id": str(row.id),
                        "field": rule.field,
                        "target": truth.get(rule.field),
                        "prediction": value.get(rule.field),
                    }
                )
    n = len(predictions)
    field_acc = {f: float(np.mean(v)) if n else 0.0 for f, v in per_field.items()}
    total = sum(weights.values())
    precision = slots["true_positives"] / slots["predicted"] if slots["predicted"] else 0.0
    recall = slots["true_positives"] / slots["expected"] if slots["expected"] else 0.0
    return {
        "task_kind": "extraction",
        "primary": "field_accuracy",
        "headline_keys": [
            "n",
            "json_validity",
            "schema_validity",
            "field_accuracy",
            "record_exact_match",
            "slot_f1",
            "must_never_failures",
        ],
        "n": n,
        "json_validity": float(np.mean(valid_json)) if n else 0.0,
        "schema_validity": float(np.mean(valid_schema)) if n else 0.0,
        "field_accuracy": sum(weights[f] * field_acc[f] for f in fields) / total if total else 0.0,
        "record_exact_match": float(np.mean(record_match)) if n else 0.0,
        # the slot-filling view: only fields that hold a value count, so answering null everywhere scores 0
        "slot_precision": precision,
        "slot_recall": recall,
        "slot_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "per_field": {f: {"exact_match": field_acc[f], "weight": weights[f]} for f in fields},
        "must_never_failures": len(must_never),
        "must_never_examples": must_never,
    }


def tool_metrics(card: JobCard, predictions: pd.DataFrame) -> dict:
    """Tool accuracy, whole-call exact match, invalid-call rate, per-tool precision/recall/F1."""
    tools = card.choices
    true_tools, pred_tools, exact, invalid, costs, must_never = [], [], [], [], [], []
    for row in predictions.itertuples():
        truth = json.loads(row.target)
        value, error = parse_json(row.prediction)
        problems = [error] if error else check_tool_call(card, value)
        invalid.append(bool(problems))
        predicted_tool = value.get("tool") if isinstance(value, dict) else None
        true_tools.append(truth["tool"])
        pred_tools.append(str(predicted_tool))
        exact.append(not problems and value == truth)
        costs.append(card.error_cost(truth["tool"], str(predicted_tool)))
        if card.is_must_never(truth["tool"], str(predicted_tool)):
            must_never.append({"id": str(row.id), "target": truth["tool"], "prediction": predicted_tool})
    n = len(predictions)
    precision, recall, f1, support = precision_recall_fscore_support(
        true_tools, pred_tools, labels=tools, zero_division=0
    )
    return {
        "task_kind": "tool_selection",
        "primary": "argument_exact_match",
        "headline_keys": [
            "n",
            "tool_accuracy",
            "argument_exact_match",
            "invalid_call_rate",
            "cost_weighted_error",
            "must_never_failures",
        ],
        "n": n,
        "tool_accuracy": float(accuracy_score(true_tools, pred_tools)) if n else 0.0,
        "argument_exact_match": float(np.mean(exact)) if n else 0.0,
        "invalid_call_rate": float(np.mean(invalid)) if n else 0.0,
        "cost_weighted_error": float(np.mean(costs)) if n else 0.0,
        "per_tool": {
            tool: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for tool, p, r, f, s in zip(tools, precision, recall, f1, support)
        },
        "confusion_matrix": {
            "labels": tools,
            "matrix": confusion_matrix(true_tools, pred_tools, labels=tools).tolist(),
        },
        "must_never_failures": len(must_never),
        "must_never_examples": must_never,
    }


def drafting_metrics(card: JobCard, predictions: pd.DataFrame) -> dict:
    """Pass rate of each rule, share of drafts passing every rule, and TF-IDF similarity to the reference."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    checks = [check_draft(card, row.prediction, row.text) for row in predictions.itertuples()]
    names = rule_names(card.rules)
    n = len(predictions)
    per_rule = {name: float(np.mean([c[name] for c in checks])) if n else 0.0 for name in names}
    similarity = 0.0
    if n:
        vectors = TfidfVectorizer().fit(list(predictions["target"]) + list(predictions["prediction"]))
        refs, preds = vectors.transform(predictions["target"]), vectors.transform(predictions["prediction"])
        similarity = float(np.mean(np.asarray(refs.multiply(preds).sum(axis=1)).ravel()))
    guarded = {rule.rule for rule in card.must_never}
    must_never = [
        {"id": str(row.id), "rule": name}
        for row, check in zip(predictions.itertuples(), checks)
        for name in names
        if name in guarded and not check[name]
    ]
    return {
        "task_kind": "drafting",
        "primary": "rule_pass_rate",
        "headline_keys": ["n", "rule_pass_rate", "reference_similarity", "must_never_failures"],
        "n": n,
        "rule_pass_rate": float(np.mean([all(c.values()) for c in checks])) if n else 0.0,
        "reference_similarity": similarity,
        "per_rule": {name: {"pass_rate": rate} for name, rate in per_rule.items()},
        "must_never_failures": len(must_never),
        "must_never_examples": must_never,
    }


def evaluate(card: JobCard, predictions: pd.DataFrame) -> dict:
    """The task kind's metrics for a frame of predictions (columns target and prediction)."""
    return {
        "classification": classification_metrics,
        "extraction": extraction_metrics,
        "tool_selection": tool_metrics,
        "drafting": drafting_metrics,
    }[card.task_kind](card, predictions)


def per_class_table(metrics: dict) -> pd.DataFrame:
    """Per-class, per-field, per-tool or per-rule figures as a table."""
    for key in ("per_class", "per_tool", "per_field", "per_rule"):
        if key in metrics:
            table = pd.DataFrame(metrics[key]).T
            return table.astype({"support": int}).round(3) if "support" in table else table.round(3)
    raise KeyError("no per-part figures in these metrics")


def headline(metrics: dict) -> dict:
    """The headline figures of a metrics dict, rounded for display."""
    return {
        key: round(metrics[key], 4) if isinstance(metrics[key], float) else metrics[key]
        for key in metrics["headline_keys"]
    }


# card target -> (metric, whether the metric must be at least (True) or at most (False) the target)
_TARGETS = {
    "macro_f1": ("macro_f1", True),
    "accuracy": ("accuracy", True),
    "json_validity": ("json_validity", True),
    "schema_validity": ("schema_validity", True),
    "field_accuracy": ("field_accuracy", True),
    "record_exact_match": ("record_exact_match", True),
    "tool_accuracy": ("tool_accuracy", True),
    "argument_exact_match": ("argument_exact_match", True),
    "max_invalid_call_rate": ("invalid_call_rate", False),
    "rule_pass_rate": ("rule_pass_rate", True),
}


def check_targets(card: JobCard, metrics: dict) -> list[dict]:
    """Each of the card's success targets that applies to these metrics, with the achieved value and whether it is met."""
    checks = []
    for name, (metric, at_least) in _TARGETS.items():
        required = getattr(card.targets, name)
        if required is None or metric not in metrics:
            continue
        achieved = metrics[metric]
        met = achieved >= required if at_least else achieved <= required
        checks.append(
            {
                "target": metric,
                "required": f"{'>=' if at_least else '<='} {required}",
                "achieved": round(achieved, 4),
                "met": met,
            }
        )
    limit = card.targets.must_never_failures
    checks.append(
        {
            "target": "must_never_failures",
            "required": f"<= {limit}",
            "achieved": metrics["must_never_failures"],
            "met": metrics["must_never_failures"] <= limit,
        }
    )
    return checks


def weak_spots(metrics: dict, n: int = 3) -> list[str]:
    """The ``n`` weakest classes, tools, fields or rules, with their score."""
    for key, score in (
        ("per_class", "f1"),
        ("per_tool", "f1"),
        ("per_field", "exact_match"),
        ("per_rule", "pass_rate"),
    ):
        if key in metrics:
            parts = metrics[key]
            worst = sorted(parts, key=lambda part: parts[part][score])[:n]
            return [f"{part} ({score} {parts[part][score]:.2f})" for part in worst]
    return []


def baseline_verdict(card: JobCard, metrics: dict, variant: str = "prompting") -> dict:
    """Plain-words verdict on the best cheap baseline: does it already do the job, or is fine-tuning warranted and where?"""
    failed = [c for c in check_targets(card, metrics) if not c["met"]]
    if not failed:
        text = (
            f"The best cheap baseline ({variant}) already meets every target on the card: fine-tuning is not warranted. "
            f"Ship {variant}; train only if something the card does not measure demands it (FORCE_TRAINING=true)."
        )
    else:
        misses = "; ".join(f"{c['target']} {c['achieved']} (needs {c['required']})" for c in failed)
        text = (
            f"The best cheap baseline ({variant}) misses {len(failed)} target(s): {misses}. Fine-tuning is warranted "
            f"only if the tuned model beats {variant}, not just prompting; weakest: {', '.join(weak_spots(metrics))}."
        )
    return {"variant": variant, "meets_targets": not failed, "missed": [c["target"] for c in failed], "text": text}
