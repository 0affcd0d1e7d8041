"""The task kinds, one object each: what the model is told, how it is predicted, what counts as right, its metrics.

A new kind is a module here with a ``TaskKind`` subclass, added to ``KINDS``, plus its part of the job card's schema
(``job``) and of answer parsing (``outputs``).
"""

from __future__ import annotations

from tunebook.job import JobCard
from tunebook.tasks.base import TaskKind
from tunebook.tasks.classification import Classification
from tunebook.tasks.drafting import Drafting
from tunebook.tasks.extraction import Extraction
from tunebook.tasks.tool_selection import ToolSelection

KINDS: dict[str, TaskKind] = {
    kind.name: kind for kind in (Classification(), Extraction(), ToolSelection(), Drafting())
}


def task_of(card: JobCard) -> TaskKind:
    """The task kind object of a job card."""
    return KINDS[card.task_kind]


__all__ = ["KINDS", "TaskKind", "task_of"]
