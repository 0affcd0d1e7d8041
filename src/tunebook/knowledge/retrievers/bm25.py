"""BM25 over stemmed words (``bm25s``)."""

from __future__ import annotations

from pathlib import Path

import bm25s
import Stemmer

from tunebook.knowledge.passages import Passage
from tunebook.knowledge.retrievers.base import Hits, Retriever, passage_text, register_retriever

_STEMMER = Stemmer.Stemmer("english")


def _tokens(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", stemmer=_STEMMER, return_ids=False, show_progress=False)


@register_retriever
class BM25(Retriever):
    """Lexical retrieval: BM25 (Lucene's variant, k1 1.5, b 0.75) over English-stemmed words without stop words."""

    name = "bm25"
    simplicity = 0

    def __init__(self) -> None:
        self.index: bm25s.BM25 | None = None
        self.size = 0

    def fit(self, passages: list[Passage]) -> BM25:
        self.index = bm25s.BM25()
        self.index.index(_tokens([passage_text(p) for p in passages]), show_progress=False)
        self.size = len(passages)
        return self

    def search(self, queries: list[str], k: int) -> Hits:
        k = min(k, self.size)
        if not queries or k == 0:
            return [[] for _ in queries]
        # bm25s rejects a query without a known word; those get no hits
        tokens = [[w for w in q if w in self.index.vocab_dict] for q in _tokens(queries)]
        hits: Hits = [[] for _ in queries]
        asked = [i for i, q in enumerate(tokens) if q]
        if asked:
            docs, scores = self.index.retrieve([tokens[i] for i in asked], k=k, show_progress=False, n_threads=1)
            for row, i in enumerate(asked):
                hits[i] = [(int(d), float(s)) for d, s in zip(docs[row], scores[row]) if s > 0]
        return hits

    def save(self, folder: Path) -> None:
        self.index.save(str(folder / "bm25"), show_progress=False)

    @classmethod
    def load(cls, folder: Path, passages: list[Passage]) -> BM25:
        loaded = cls()
        loaded.index = bm25s.BM25.load(str(folder / "bm25"), show_progress=False)
        loaded.size = len(passages)
        return loaded
