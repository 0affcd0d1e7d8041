"""Training prompts for the hybrid stack, after RAFT (Zhang et al. 2024, "RAFT: Adapting Language Model to Domain
Specific RAG"): each training question gets ``k`` passages, its source among distractors most of the time and left
out the rest, when the answer it learns is the job's hand-over. The adapter learns to answer from what it is given,
cite it, and say when it is not there; the facts stay in the documents."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tunebook.card.grounding import abstained
from tunebook.card.schema import JobCard
from tunebook.errors import KnowledgeError
from tunebook.knowledge.context import KnowledgeIndex
from tunebook.knowledge.render import render_passages

SOURCE_SHARE = 0.8  # RAFT's P: the share of answerable training questions shown their source (the paper's default)


def _greeting_name(card: JobCard, target: str) -> str | None:
    for pattern in card.rules.required_patterns if card.rules is not None else []:
        match = re.match(pattern.regex, target)
        if match and match.groups():
            return match.group(1)
    return None


def handover_target(card: JobCard, target: str, examples: list[str], rng: np.random.Generator) -> str:
    """The job's hand-over answer in place of ``target``: one of the training hand-overs (``examples``, drawn with
    ``rng``); for drafting, one whose greeting fits, with ``target``'s greeting and the name in it."""
    if not examples:
        raise KnowledgeError(
            "training with passages left out needs hand-over answers to learn from: the train split has no example "
            f"whose answer says '{card.knowledge.abstain_phrase}' (knowledge.abstain_phrase). Add questions no "
            "article answers, with their hand-over reply, to the data."
        )
    if card.task_kind != "drafting":
        return examples[rng.integers(len(examples))]
    name = _greeting_name(card, target)
    fitting = [e for e in examples if (_greeting_name(card, e) == "there") == (name == "there")] or examples
    template = fitting[rng.integers(len(fitting))]
    first_line, rest = template.split("\n", 1) if "\n" in template else (template, "")
    own_first = target.split("\n", 1)[0]
    template_name = _greeting_name(card, template)
    if template_name and name and template_name != "there" and name != "there":
        rest = re.sub(rf"\b{re.escape(template_name)}\b", name, rest)
    return own_first + "\n" + rest if rest else own_first


def raft_frame(
    card: JobCard, frame: pd.DataFrame, index: KnowledgeIndex, source_share: float = SOURCE_SHARE, seed: int = 0
) -> pd.DataFrame:
    """``frame`` (a train split with ``sources``) with ``k`` passages per question: for an answerable question, its
    source passages and the best-ranked other passages as distractors, in a shuffled order, in ``source_share`` of
    questions; in the rest, distractors only and the hand-over as the answer. Questions no article answers keep
    their retrieved passages and their hand-over."""
    rng = np.random.default_rng(seed)
    passages, k = index.knowledge.passages, index.k
    by_article: dict[str, list[int]] = {}
    for i, p in enumerate(passages):
        by_article.setdefault(p.article, []).append(i)
    handovers = [t for t, s in zip(frame["target"], frame["sources"]) if not s and abstained(card, t)]
    ranked = index.retriever.search(frame["text"].astype(str).tolist(), k + 8)
    contexts, retrieved, targets, shown = [], [], [], []
    for row, hits in zip(frame.itertuples(), ranked):
        sources = set(row.sources)
        distractors = [i for i, _ in hits if passages[i].article not in sources]
        source_ids = [i for a in row.sources for i in by_article.get(a, [])][:k]
        show = bool(sources) and rng.random() < source_share
        if show:
            chosen = source_ids + distractors[: k - len(source_ids)]
            rng.shuffle(chosen)
        else:
            chosen = distractors[:k]
        contexts.append(render_passages([passages[i] for i in chosen]))
        retrieved.append([passages[i].id for i in chosen])
        targets.append(row.target if show or not sources else handover_target(card, row.target, handovers, rng))
        shown.append(show)
    result = frame.copy()
    result["context"], result["retrieved"], result["target"], result["source_shown"] = (
        contexts,
        retrieved,
        targets,
        shown,
    )
    return result
