"""Task metrics, computed the same way for the baseline and the tuned model."""

from __future__ import annotations

import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from tunebook.job import JobCard


def classification_metrics(card: JobCard, predictions: pd.DataFrame) -> dict:
    """Accuracy, macro/weighted F1, per-class figures, confusion matrix, cost-weighted error and must-never failures."""
    labels = card.label_names
    y_true, y_pred = predictions["label"].tolist(), predictions["prediction"].tolist()
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    costs = [card.error_cost(t, p) for t, p in zip(y_true, y_pred)]
    must_never = [
        {"id": str(row.id), "label": row.label, "prediction": row.prediction}
        for row in predictions.itertuples()
        if card.is_must_never(row.label, row.prediction)
    ]
    return {
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


def per_class_table(metrics: dict) -> pd.DataFrame:
    """Per-class precision/recall/F1/support as a table."""
    return pd.DataFrame(metrics["per_class"]).T.astype({"support": int}).round(3)


def headline(metrics: dict) -> dict:
    """The headline figures of a metrics dict, rounded for display."""
    keys = ("n", "accuracy", "macro_f1", "weighted_f1", "cost_weighted_error", "must_never_failures")
    return {key: round(metrics[key], 4) if isinstance(metrics[key], float) else metrics[key] for key in keys}


def check_targets(card: JobCard, metrics: dict) -> list[dict]:
    """Each of the card's success targets with the achieved value and whether it is met."""
    checks = []
    for name in ("macro_f1", "accuracy"):
        required = getattr(card.targets, name)
        if required is not None:
            checks.append({"target": name, "required": f">= {required}", "achieved": round(metrics[name], 4), "met": metrics[name] >= required})
    limit = card.targets.must_never_failures
    checks.append({"target": "must_never_failures", "required": f"<= {limit}", "achieved": metrics["must_never_failures"], "met": metrics["must_never_failures"] <= limit})
    return checks


def weakest_classes(metrics: dict, n: int = 3) -> list[str]:
    """The ``n`` labels with the lowest F1."""
    return sorted(metrics["per_class"], key=lambda label: metrics["per_class"][label]["f1"])[:n]


def baseline_verdict(card: JobCard, metrics: dict) -> str:
    """Plain-words verdict: is prompting enough, or is fine-tuning warranted and where?"""
    failed = [c for c in check_targets(card, metrics) if not c["met"]]
    if not failed:
        return "Prompting meets every target on the card: fine-tuning is not warranted. Ship the prompt."
    misses = "; ".join(f"{c['target']} {c['achieved']} (needs {c['required']})" for c in failed)
    weak = ", ".join(f"{label} (F1 {metrics['per_class'][label]['f1']:.2f})" for label in weakest_classes(metrics))
    return f"Prompting misses {len(failed)} target(s): {misses}. Fine-tuning is warranted; weakest classes: {weak}."
