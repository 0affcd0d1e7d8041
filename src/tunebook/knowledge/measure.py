"""How well a retriever finds each question's source article: recall@k and MRR, and the choice between retrievers
(made on the validation split only)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from tunebook.errors import KnowledgeError
from tunebook.knowledge.passages import Knowledge
from tunebook.knowledge.retrievers import RETRIEVERS, Retriever

DEPTH = 20  # ranks read for MRR; a source found deeper counts as not found


def source_ranks(
    retriever: Retriever, knowledge: Knowledge, questions: list[str], sources: list[list[str]]
) -> np.ndarray:
    """Per question: the rank (1 = first) of the first passage from one of its source articles, 0 when not found
    within ``DEPTH``."""
    hits = retriever.search(questions, DEPTH)
    ranks = np.zeros(len(questions), dtype=int)
    for q, (found, wanted) in enumerate(zip(hits, sources)):
        for rank, (index, _) in enumerate(found, start=1):
            if knowledge.passages[index].article in wanted:
                ranks[q] = rank
                break
    return ranks


def retrieval_scores(ranks: np.ndarray, k: int) -> dict[str, float]:
    """recall@1, recall@k and MRR (to ``DEPTH``) from source ranks."""
    found = ranks > 0
    return {
        "questions": int(len(ranks)),
        "recall@1": float(np.mean(found & (ranks <= 1))) if len(ranks) else 0.0,
        f"recall@{k}": float(np.mean(found & (ranks <= k))) if len(ranks) else 0.0,
        "mrr": float(np.mean(np.where(found, 1.0 / np.maximum(ranks, 1), 0.0))) if len(ranks) else 0.0,
    }


def answerable(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose answer rests on at least one article (the others have no source to find)."""
    if "sources" not in frame:
        raise KnowledgeError("these examples carry no source articles (knowledge.source_column in the job card).")
    return frame[frame["sources"].map(len) > 0]


def compare_retrievers(
    knowledge: Knowledge, frame: pd.DataFrame, k: int, names: list[str] | None = None
) -> tuple[pd.DataFrame, dict[str, Retriever]]:
    """Each available retriever fitted on the passages and scored on ``frame``'s answerable questions, with the
    seconds it took to index and the milliseconds per question; and the fitted retrievers."""
    rows, fitted = {}, {}
    asked = answerable(frame)
    for name in names or sorted(RETRIEVERS, key=lambda n: RETRIEVERS[n].simplicity):
        cls = RETRIEVERS[name]
        if cls.available():
            continue
        started = time.perf_counter()
        fitted[name] = cls().fit(knowledge.passages)
        indexed = time.perf_counter() - started
        started = time.perf_counter()
        ranks = source_ranks(fitted[name], knowledge, asked["text"].tolist(), asked["sources"].tolist())
        per_question = 1000 * (time.perf_counter() - started) / max(1, len(asked))
        rows[name] = {
            **retrieval_scores(ranks, k),
            "index seconds": round(indexed, 2),
            "ms per question": round(per_question, 2),
        }
    return pd.DataFrame(rows).T, fitted


def choose_retriever(table: pd.DataFrame, k: int) -> tuple[str, str]:
    """The retriever with the best recall@k on validation, then MRR, then the simplest; and why."""
    ranked = sorted(
        table.index, key=lambda n: (-table.loc[n, f"recall@{k}"], -table.loc[n, "mrr"], RETRIEVERS[n].simplicity)
    )
    best = ranked[0]
    why = f"best recall@{k} on validation ({table.loc[best, f'recall@{k}']:.3f}, MRR {table.loc[best, 'mrr']:.3f})" + (
        ", the simplest on a tie"
        if len(ranked) > 1 and table.loc[ranked[1], f"recall@{k}"] == table.loc[best, f"recall@{k}"]
        else ""
    )
    return best, why
