"""The task kinds, one object each: what the model is told, how it is predicted, what counts as right, its metrics.

A new kind is a module here with a ``TaskKind`` subclass, added to ``KINDS``, plus its part of the job card's schema
(``job``) and of answer parsing (``outputs``).
"""

from __future__ import annotations

from tunebook.card.schema import JobCard
from tunebook.card.tasks.base import TaskKind
from tunebook.card.tasks.classification import Classification
from tunebook.card.tasks.drafting import Drafting
from tunebook.card.tasks.extraction import Extraction
from tunebook.card.tasks.grounded import Grounded
from tunebook.card.tasks.tool_selection import ToolSelection

KINDS: dict[str, TaskKind] = {
    kind.name: kind for kind in (Classification(), Extraction(), ToolSelection(), Drafting())
}


def task_of(card: JobCard) -> TaskKind:
    """The task kind object of a job card (answered from retrieved documents when the card has a knowledge
    section)."""
    kind = KINDS[card.task_kind]
    return _GROUNDED.setdefault(kind.name, Grounded(kind)) if card.knowledge is not None else kind


_GROUNDED: dict[str, Grounded] = {}


__all__ = ["KINDS", "TaskKind", "task_of"]
