"""BM25 and dense retrieval fused by reciprocal rank (Cormack et al. 2009)."""

from __future__ import annotations

from pathlib import Path

from tunebook.knowledge.passages import Passage
from tunebook.knowledge.retrievers.base import Hits, Retriever, register_retriever
from tunebook.knowledge.retrievers.bm25 import BM25
from tunebook.knowledge.retrievers.dense import Dense

RRF_K = 60  # the constant of the original paper; it damps the weight of the very first ranks
DEPTH = 50  # how deep each list is read before fusing


def fuse(rankings: list[Hits], k: int, constant: int = RRF_K) -> Hits:
    """Reciprocal-rank fusion: each passage scores the sum of 1 / (constant + rank) over the lists that hold it."""
    fused = []
    for lists in zip(*rankings):
        scores: dict[int, float] = {}
        for hits in lists:
            for rank, (index, _) in enumerate(hits, start=1):
                scores[index] = scores.get(index, 0.0) + 1.0 / (constant + rank)
        fused.append(sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k])
    return fused


@register_retriever
class Hybrid(Retriever):
    """BM25 for exact words (product names, amounts) and dense for paraphrases, fused by reciprocal rank."""

    name = "hybrid"
    simplicity = 2

    def __init__(self) -> None:
        self.parts: list[Retriever] = []

    @classmethod
    def available(cls) -> str | None:
        return Dense.available()

    def fit(self, passages: list[Passage]) -> Hybrid:
        self.parts = [BM25().fit(passages), Dense().fit(passages)]
        return self

    def search(self, queries: list[str], k: int) -> Hits:
        return fuse([part.search(queries, max(k, DEPTH)) for part in self.parts], k)

    def save(self, folder: Path) -> None:
        for part in self.parts:
            part.save(folder)

    @classmethod
    def load(cls, folder: Path, passages: list[Passage]) -> Hybrid:
        loaded = cls()
        loaded.parts = [BM25.load(folder, passages), Dense.load(folder, passages)]
        return loaded
