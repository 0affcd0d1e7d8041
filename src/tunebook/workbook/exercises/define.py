"""The exercises of 00 · define the job: each check works out the right answer from the run folder."""

from __future__ import annotations

from typing import Any

from tunebook.core.runfolder import RunFolder
from tunebook.define.approach import decide_approach
from tunebook.scoring.metrics import check_targets
from tunebook.workbook.exercises.checking import (
    Feedback,
    as_bool,
    as_text,
    exercise,
    judged,
    not_applicable,
)


@exercise('a pair (true label, predicted label), e.g. ("billing", "technical"); read the cost matrix row by row.')
def check_costliest_mistake(answer: Any, run: RunFolder) -> Feedback:
    """The mistake (true, predicted) that costs the most under the card's error costs."""
    card = run.read_job_card()
    if not card.choices:
        return not_applicable(f"a {card.task_kind} job has no cost matrix")
    costs = {(t, p): card.error_cost(t, p) for t in card.choices for p in card.choices if t != p}
    top = max(costs.values())
    pair = tuple(as_text(v) for v in answer) if isinstance(answer, (tuple, list)) and len(answer) == 2 else None
    labels = {as_text(c): c for c in card.choices}
    if pair is None or None in pair:
        return Feedback(False, 'answer with a pair of labels (true, predicted), e.g. ("billing", "technical").')
    if not all(p in labels for p in pair):
        return Feedback(False, f"use the card's labels: {', '.join(card.choices)}.")
    true, predicted = labels[pair[0]], labels[pair[1]]
    cost = card.error_cost(true, predicted)
    if cost == top and true != predicted:
        ties = sum(c == top for c in costs.values())
        return Feedback(
            True,
            f"`{true}` answered as `{predicted}` costs {top:g}, the most on this card ({ties} mistake(s) cost that "
            f"much; a mistake the card does not price costs 1).",
        )
    return Feedback(
        False,
        f"that mistake costs {cost:g}. Rows are the true labels, columns the predictions: find the largest number.",
    )


@exercise("True or False: would the frame still recommend fine-tuning?")
def check_frame_if_prompting_suffices(answer: Any, run: RunFolder) -> Feedback:
    """Whether the decision frame still recommends training when better prompting would solve most of the job."""

    card = run.read_job_card()
    changed = card.model_copy(update={"decision": card.decision.model_copy(update={"prompting_solves_most": True})})
    decision = decide_approach(changed)
    said = as_bool(answer)
    return judged(
        said,
        said == decision.proceed_to_training,
        "answer True (it still recommends fine-tuning) or False.",
        f"with `prompting_solves_most: true` the frame says {decision.approach}: {decision.reasons[-1]}",
        "if prompting already solves most of it, what would training buy? Try it: "
        "`approach.decide_approach(card.model_copy(update=...))` with that one answer changed.",
    )


@exercise("True or False: does that model meet the card's targets?")
def check_targets_with_one_must_never(answer: Any, run: RunFolder) -> Feedback:
    """Whether a model with 0.97 accuracy and macro-F1 but one must-never failure meets the card's targets."""

    card = run.read_job_card()
    checks = check_targets(card, {"accuracy": 0.97, "macro_f1": 0.97, "must_never_failures": 1})
    truth = all(c.met for c in checks)
    said = as_bool(answer)
    if said is None:
        return Feedback(False, "answer True (it meets every target) or False.")
    table = "; ".join(f"{c.target} {c.achieved} (needs {c.required}): {'met' if c.met else 'missed'}" for c in checks)
    if said == truth:
        return Feedback(True, f"{table}. No average excuses a must-never failure: it is counted on its own.")
    return Feedback(
        False, "look at the card's targets: besides accuracy and F1, how many must-never failures does it allow?"
    )
