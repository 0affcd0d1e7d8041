"""The task kinds, one module each: what the model is told, how it is predicted, what counts as right, its metrics.

A new kind is a module here with a ``TaskKind`` subclass decorated with ``register_kind`` (its card checks, target
parsing and answer checks included), imported below and named in ``schema.TASK_KINDS``.
"""

from __future__ import annotations

from tunebook.card.schema import JobCard
from tunebook.card.tasks import classification, drafting, extraction, tool_selection  # noqa: F401  (they register)
from tunebook.card.tasks.base import KINDS, TaskKind
from tunebook.card.tasks.grounded import Grounded


def task_of(card: JobCard) -> TaskKind:
    """The task kind object of a job card (answered from retrieved documents when the card has a knowledge
    section)."""
    kind = KINDS[card.task_kind]
    return _GROUNDED.setdefault(kind.name, Grounded(kind)) if card.knowledge is not None else kind


_GROUNDED: dict[str, Grounded] = {}


__all__ = ["KINDS", "TaskKind", "task_of"]
