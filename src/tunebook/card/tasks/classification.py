"""Classification: one label from the card's list, scored over the labels rather than generated."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.card.tasks.base import TaskKind, choice_problems, label_figures, per_label, rate, register_kind


@register_kind
class Classification(TaskKind):
    """The answer is one label; its metrics are accuracy, macro / weighted F1, per-class figures and error cost."""

    name = "classification"
    primary = "macro_f1"
    scores_choices = True
    choice_is_answer = True

    def card_problems(self, card: JobCard) -> list[str]:
        problems = choice_problems(card, "labels", [label.name for label in card.labels])
        if card.escalate_label is not None and card.escalate_label not in card.label_names:
            problems.append(f"escalate_label: '{card.escalate_label}' is not one of the labels {card.label_names}")
        return problems

    def prompt_block(self, card: JobCard) -> list[str]:
        return ["Answer with exactly one label from this list:"] + [
            f"- {label.name}: {label.definition}" for label in card.labels
        ]

    def overview(self, card: JobCard) -> list[dict]:
        return [label.model_dump() for label in card.labels]

    def parse_target(self, card: JobCard, raw, source: str) -> tuple[str, list[str]]:
        return str(raw).strip(), []

    def stratum(self, card: JobCard, target: str) -> str:
        return target

    def correct(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return (predictions["prediction"] == predictions["target"]).to_numpy()

    def parts(self, card: JobCard, predictions: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        right = self.correct(card, predictions)
        return {name: ((predictions["target"] == name).to_numpy(), right) for name in card.choices}

    def usable(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return predictions["prediction"].isin(card.label_names).to_numpy()

    def metrics(self, card: JobCard, predictions: pd.DataFrame) -> dict:
        """Accuracy, macro/weighted F1, per-class figures, confusion matrix, cost-weighted error, must-never failures."""
        labels = card.label_names
        y_true, y_pred = predictions["target"].tolist(), predictions["prediction"].tolist()
        figures = label_figures(labels, y_true, y_pred)
        costs = [card.error_cost(t, p) for t, p in zip(y_true, y_pred)]
        must_never = [
            {"id": str(row.id), "target": row.target, "prediction": row.prediction}
            for row in predictions.itertuples()
            if card.is_must_never(row.target, row.prediction)
        ]
        return self._frame(
            ["n", "accuracy", "macro_f1", "weighted_f1", "cost_weighted_error", "must_never_failures"],
            len(y_true),
            must_never,
            accuracy=rate(self.correct(card, predictions)),
            macro_f1=figures["macro_f1"],
            weighted_f1=figures["weighted_f1"],
            per_class=per_label(labels, figures),
            confusion_matrix={"labels": labels, "matrix": figures["matrix"].tolist()},
            cost_weighted_error=float(sum(costs) / len(costs)) if costs else 0.0,
        )
