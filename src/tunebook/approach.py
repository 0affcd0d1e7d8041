"""Whether fine-tuning is the right tool for a job: 00's decision frame, from the five answers in the job card's
``decision`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from tunebook.job import JobCard


class Decision(BaseModel):
    """The recommended approach and the reasons for it."""

    approach: Literal["prompting", "rag", "fine-tuning", "hybrid", "not-yet"]
    reasons: list[str]
    proceed_to_training: bool


def decide_approach(card: JobCard) -> Decision:
    """Turn the card's five answers into a recommendation with reasons."""
    a = card.decision
    if not a.can_evaluate:
        return Decision(
            approach="not-yet",
            reasons=[
                "It cannot be evaluated on real cases yet: build a labelled test set first; "
                "without one no approach can be shown to work."
            ],
            proceed_to_training=False,
        )
    reasons: list[str] = []
    if not a.behaviour_not_knowledge:
        reasons.append(
            "The gap is missing knowledge: retrieval supplies facts at runtime, training does not store them reliably."
        )
        if a.repeats_enough and a.examples_collectable and not a.prompting_solves_most:
            reasons.append(
                "The task also repeats with collectable examples that prompting does not fix: tune the behaviour on top of retrieval."
            )
            return Decision(approach="hybrid", reasons=reasons, proceed_to_training=True)
        return Decision(approach="rag", reasons=reasons, proceed_to_training=False)
    if a.prompting_solves_most:
        reasons.append(
            "Better prompting is expected to solve most of it: prompting steers at runtime and costs no training."
        )
        return Decision(approach="prompting", reasons=reasons, proceed_to_training=False)
    if not a.repeats_enough:
        reasons.append("The task does not repeat enough to repay collecting data and training.")
        return Decision(approach="prompting", reasons=reasons, proceed_to_training=False)
    if not a.examples_collectable:
        reasons.append("Examples of success and failure cannot be collected, so there is nothing to train on.")
        return Decision(approach="prompting", reasons=reasons, proceed_to_training=False)
    reasons += [
        "The gap is behaviour (judgement, format, consistency), which fine-tuning changes before runtime.",
        "The task repeats and examples of success and failure can be collected.",
        "Prompting alone is not expected to be enough; the baseline notebook measures that claim.",
        "It can be evaluated on real cases, so the tuned model can be held to the card's targets.",
    ]
    return Decision(approach="fine-tuning", reasons=reasons, proceed_to_training=True)
