"""Whether fine-tuning is the right tool for a job: 00's decision frame, from the five answers in the job card's
``decision`` section."""

from __future__ import annotations

from tunebook.card.schema import JobCard
from tunebook.core.artifacts import Approach


def decide_approach(card: JobCard) -> Approach:
    """Turn the card's five answers into a recommendation with reasons."""
    a = card.decision
    if not a.can_evaluate:
        return Approach(
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
            return Approach(approach="hybrid", reasons=reasons, proceed_to_training=True)
        return Approach(approach="rag", reasons=reasons, proceed_to_training=False)
    if a.prompting_solves_most:
        reasons.append(
            "Better prompting is expected to solve most of it: prompting steers at runtime and costs no training."
        )
        return Approach(approach="prompting", reasons=reasons, proceed_to_training=False)
    if not a.repeats_enough:
        reasons.append("The task does not repeat enough to repay collecting data and training.")
        return Approach(approach="prompting", reasons=reasons, proceed_to_training=False)
    if not a.examples_collectable:
        reasons.append("Examples of success and failure cannot be collected, so there is nothing to train on.")
        return Approach(approach="prompting", reasons=reasons, proceed_to_training=False)
    reasons += [
        "The gap is behaviour (judgement, format, consistency), which fine-tuning changes before runtime.",
        "The task repeats and examples of success and failure can be collected.",
        "Prompting alone is not expected to be enough; the baseline notebook measures that claim.",
        "It can be evaluated on real cases, so the tuned model can be held to the card's targets.",
    ]
    return Approach(approach="fine-tuning", reasons=reasons, proceed_to_training=True)
