"""Whether answers state the right facts from the passages they were given: fact accuracy, groundedness, citation
validity and abstention, each checked by a program; and the freshness figures after the documents change."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd

from tunebook.card.schema import JobCard

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_UNITS = r"(?:working |business |calendar )?(?:days?|weeks?|months?|years?|hours?|minutes?)|%|percent|kg|g|cm|km"
# numbers, amounts, dates, times and durations: the claims a reader can check against a document
_NUMERIC = re.compile(
    rf"[€$£]\s?\d[\d,]*(?:\.\d+)?|\d[\d,]*(?:\.\d+)?\s?(?:€|euros?|EUR)"
    rf"|\d{{1,2}}:\d{{2}}|\d{{1,2}}\s(?:{_MONTHS})(?:\s\d{{4}})?|(?:{_MONTHS})\s\d{{1,2}}"
    rf"|\d[\d,]*(?:\.\d+)?\s?(?:{_UNITS})\b",
    re.I,
)
# named products and places: runs of capitalised words (one word alone at a sentence's start is just a sentence)
_NAMED = re.compile(r"[A-Z][\w'’-]*(?:\s(?:of\s|de\s|la\s)?[A-Z][\w'’-]*)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|\n\s*)$")
_PRONOUNS = {"I", "I'm", "I've", "I'll", "I'd"}
_CITATION = re.compile(r"\[([A-Za-z0-9][A-Za-z0-9_.#-]*)\]")


def normal(text: str) -> str:
    """Case-folded NFKC text with hyphens as spaces and whitespace collapsed, for fact matching."""
    text = unicodedata.normalize("NFKC", str(text)).casefold().replace("-", " ").replace("\u2011", " ")
    return re.sub(r"\s+", " ", text).strip()


def states(answer: str, fact: str) -> bool:
    """Whether ``answer`` states ``fact`` (normalised substring on word boundaries)."""
    return re.search(rf"(?<!\w){re.escape(normal(fact))}(?!\w)", normal(answer)) is not None


def claims(answer: str, card: JobCard | None = None) -> list[str]:
    """The checkable claims in an answer: amounts, numbers with units, dates, times, and named products and places
    (citations, and a drafting card's greeting and closing line, left out)."""
    body = _CITATION.sub(" ", answer)
    if card is not None and card.rules is not None:
        for pattern in card.rules.required_patterns:
            body = re.sub(pattern.regex, " ", body)
        if card.rules.closing_line:
            body = body.replace(card.rules.closing_line, " ")
    found = [m.group(0).strip() for m in _NUMERIC.finditer(body)]
    for match in _NAMED.finditer(body):
        run = match.group(0)
        alone = " " not in run and _SENTENCE_START.search(body[: match.start()]) is not None
        if not alone and run not in _PRONOUNS:
            found.append(run)
    return found


def cited(answer: str) -> list[str]:
    """Passage or article ids the answer cites as ``[id]``."""
    return _CITATION.findall(answer)


def abstained(card: JobCard, answer: str) -> bool:
    """Whether the answer hands over (says the card's abstain phrase) instead of answering."""
    return states(answer, card.knowledge.abstain_phrase)


def _column(frame: pd.DataFrame, name: str, empty) -> list:
    if name not in frame:
        return [empty] * len(frame)
    return [value if isinstance(value, type(empty)) else empty for value in frame[name]]


def example_checks(card: JobCard, predictions: pd.DataFrame, facts_column: str = "facts") -> pd.DataFrame:
    """Per answer: answerable, abstained, every key fact stated, claims and grounded claims (in the passages given
    or the message itself), citations, and whether every citation names a passage it was given."""
    rows = []
    for answer, text, facts, sources, retrieved, context in zip(
        predictions["prediction"].fillna("").astype(str),
        predictions["text"].astype(str),
        _column(predictions, facts_column, []),
        _column(predictions, "sources", []),
        _column(predictions, "retrieved", []),
        _column(predictions, "context", ""),
    ):
        made = claims(answer, card)
        given = normal(context) + " " + normal(text)
        grounded = sum(1 for claim in made if normal(claim) in given)
        allowed = set(retrieved) | {r.split("#")[0] for r in retrieved}
        citations = cited(answer)
        gave_up = abstained(card, answer)
        rows.append(
            {
                "answerable": bool(sources) if facts_column == "facts" else bool(facts),
                "abstained": gave_up,
                "facts_right": bool(facts) and not gave_up and all(states(answer, f) for f in facts),
                "claims": len(made),
                "grounded": grounded,
                "cites": bool(citations),
                "citations_valid": bool(citations) and all(c in allowed for c in citations),
            }
        )
    return pd.DataFrame(
        rows, columns=["answerable", "abstained", "facts_right", "claims", "grounded", "cites", "citations_valid"]
    )


def correct(card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
    """Per answer: right on knowledge (every key fact stated when answerable, handed over when not)."""
    checks = example_checks(card, predictions)
    if not len(checks):
        return np.zeros(0, dtype=bool)
    return np.where(checks["answerable"], checks["facts_right"], checks["abstained"]).astype(bool)


def _share(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else 0.0


def knowledge_metrics(card: JobCard, predictions: pd.DataFrame) -> dict:
    """Fact accuracy (answerable questions), abstention (unanswerable ones), false hand-overs, groundedness (share of
    claims found in the passages given), citation rate and validity, over ``predictions``."""
    checks = example_checks(card, predictions)
    answerable = checks[checks["answerable"]] if len(checks) else checks
    unanswerable = checks[~checks["answerable"]] if len(checks) else checks
    citing = checks[checks["cites"]] if len(checks) else checks
    claims_made = int(checks["claims"].sum()) if len(checks) else 0
    return {
        "knowledge_accuracy": _share(pd.Series(correct(card, predictions))),
        "fact_accuracy": _share(answerable["facts_right"]),
        "abstention": _share(unanswerable["abstained"]),
        "false_abstention": _share(answerable["abstained"]),
        "groundedness": float(checks["grounded"].sum() / claims_made) if claims_made else 1.0,
        "citation_rate": _share(answerable["cites"]),
        "citation_validity": _share(citing["citations_valid"]),
        "answerable": int(len(answerable)),
        "unanswerable": int(len(unanswerable)),
    }


def freshness(card: JobCard, predictions: pd.DataFrame) -> dict:
    """Answers asked against a later version of the documents: the share stating a fact the later version changed
    (stale), the share stating every current fact (fresh accuracy) and the share handing over where the source
    article was removed; ``predictions`` carries ``facts`` (earlier) and ``fresh_facts`` (later) per question."""
    stale, fresh, removed = [], [], []
    for answer, old, new, sources in zip(
        predictions["prediction"].fillna("").astype(str),
        _column(predictions, "facts", []),
        _column(predictions, "fresh_facts", []),
        _column(predictions, "sources", []),
    ):
        if not sources:
            continue
        if not new:
            removed.append(abstained(card, answer))
            continue
        changed = [o for o in old if o not in new]
        if changed:
            stale.append(any(states(answer, o) for o in changed))
        fresh.append(not abstained(card, answer) and all(states(answer, f) for f in new))
    return {
        "stale_fact_rate": float(np.mean(stale)) if stale else 0.0,
        "changed_questions": len(stale),
        "fresh_fact_accuracy": float(np.mean(fresh)) if fresh else 0.0,
        "current_questions": len(fresh),
        "removed_abstention": float(np.mean(removed)) if removed else 0.0,
        "removed_questions": len(removed),
    }
