"""How retrieved passages appear in a prompt: the one format training, prompting and serving share."""

from __future__ import annotations

import pandas as pd

from tunebook.knowledge.passages import Passage


def render_passages(passages: list[Passage]) -> str:
    """Passages as the prompt shows them: ``[id] title`` then the text, one blank line apart."""
    return "\n\n".join(f"[{p.id}] {p.title}\n{p.text}" for p in passages)


def with_context(text: str, context: str) -> str:
    """The user message for one input with its passages before it (the system prompt stays shared)."""
    return f"Passages:\n{context}\n\nMessage:\n{text.strip()}" if context else text


def model_inputs(examples: pd.DataFrame) -> list[str]:
    """The user message of each example: its text, after its retrieved passages when it has any."""
    texts = examples["text"].astype(str).tolist()
    if "context" not in examples:
        return texts
    return [with_context(text, context) for text, context in zip(texts, examples["context"].fillna("").astype(str))]
