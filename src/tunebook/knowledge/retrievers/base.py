"""What every retriever provides, and the registry a new one joins (as a task kind joins ``tunebook.card.tasks``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from tunebook.errors import KnowledgeError
from tunebook.knowledge.passages import Passage

Hits = list[list[tuple[int, float]]]  # per query: (passage index, score), best first

RETRIEVERS: dict[str, type[Retriever]] = {}


class Retriever:
    """Finds the passages most relevant to a question. Subclasses set ``name`` and ``simplicity`` (lower is simpler:
    preferred on ties) and are registered with ``register_retriever``."""

    name: ClassVar[str]
    simplicity: ClassVar[int]

    @classmethod
    def available(cls) -> str | None:
        """None when the retriever can run here, else what to install."""
        return None

    def fit(self, passages: list[Passage]) -> Retriever:
        """Index ``passages`` (their titles and texts)."""
        raise NotImplementedError

    def search(self, queries: list[str], k: int) -> Hits:
        """The ``k`` best passages for each query."""
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        """Write the index into ``folder`` (no pickles)."""
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path, passages: list[Passage]) -> Retriever:
        """The index ``save`` wrote, over the same ``passages``."""
        raise NotImplementedError


def register_retriever(cls: type[Retriever]) -> type[Retriever]:
    """Class decorator: make a retriever known by its ``name``."""
    RETRIEVERS[cls.name] = cls
    return cls


def retriever_class(name: str) -> type[Retriever]:
    """The registered retriever called ``name``, checked to run here."""
    if name not in RETRIEVERS:
        raise KnowledgeError(f"unknown retriever '{name}' (knowledge.retriever); use one of {sorted(RETRIEVERS)}.")
    missing = RETRIEVERS[name].available()
    if missing:
        raise KnowledgeError(f"retriever '{name}' cannot run here: {missing}")
    return RETRIEVERS[name]


def passage_text(passage: Passage) -> str:
    """What a retriever indexes: the title, then the text."""
    return f"{passage.title}\n{passage.text}"
