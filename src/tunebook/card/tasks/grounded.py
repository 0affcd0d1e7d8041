"""Any task kind answered from retrieved documents: the kind's own rules and metrics, plus whether the answer
states the right facts, rests on the passages it was given, cites them and hands over when they hold no answer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunebook.card import grounding
from tunebook.card.schema import JobCard
from tunebook.card.tasks.base import TaskKind


class Grounded(TaskKind):
    """Wraps a task kind for a card with a ``knowledge`` section. Right means right on knowledge: every key fact
    stated when the documents hold the answer, a hand-over when they do not (the kind's own checks are reported
    beside it and keep their targets)."""

    primary = "knowledge_accuracy"

    def __init__(self, inner: TaskKind):
        self.inner = inner
        self.name = inner.name
        self.scores_choices = inner.scores_choices
        self.choice_is_answer = inner.choice_is_answer
        self.json_answer = inner.json_answer
        self.max_new_tokens = inner.max_new_tokens

    def prompt_block(self, card: JobCard) -> list[str]:
        phrase = card.knowledge.abstain_phrase
        return self.inner.prompt_block(card) + [
            "Use only the passages given with each message for facts (amounts, times, places, products), and cite "
            "the passage you use by its id in square brackets, like [id].",
            f'If the passages do not hold the answer, do not guess: say that you have "{phrase}".',
        ]

    def overview(self, card: JobCard) -> list[dict]:
        return self.inner.overview(card)

    def canonical(self, card: JobCard, value) -> str:
        return self.inner.canonical(card, value)

    def parse_target(self, card: JobCard, raw, source: str) -> tuple[str, list[str]]:
        return self.inner.parse_target(card, raw, source)

    def check_answer(self, card: JobCard, value) -> list[str]:
        return self.inner.check_answer(card, value)

    def stratum(self, card: JobCard, target: str) -> str:
        return self.inner.stratum(card, target)

    def correct(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return grounding.correct(card, predictions)

    def parts(self, card: JobCard, predictions: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        checks = grounding.example_checks(card, predictions)
        answerable, abstained = checks["answerable"].to_numpy(), checks["abstained"].to_numpy()
        knowledge = {
            "facts": (answerable, checks["facts_right"].to_numpy()),
            "hand-over": (~answerable, abstained),
        }
        return {**knowledge, **self.inner.parts(card, predictions)}

    def usable(self, card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
        return self.inner.usable(card, predictions)

    def metrics(self, card: JobCard, predictions: pd.DataFrame) -> dict:
        """The kind's metrics with the knowledge figures added; knowledge accuracy is the primary metric."""
        scores = self.inner.metrics(card, predictions)
        added = grounding.knowledge_metrics(card, predictions)
        keys = ["knowledge_accuracy", "fact_accuracy", "abstention", "groundedness", "citation_validity"]
        return {
            **scores,
            **added,
            "primary": self.primary,
            "headline_keys": ["n", *keys, *[k for k in scores["headline_keys"] if k != "n"]],
        }

    def trivial_answer(self, card: JobCard, train: pd.DataFrame) -> str:
        return self.inner.trivial_answer(card, train)
