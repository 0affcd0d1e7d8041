"""The exercises of 02 · prove the baseline: each check works out the right answer from the run folder."""

from __future__ import annotations

from typing import Any

from tunebook.core.runfolder import RunFolder, Step
from tunebook.workbook.exercises.checking import (
    Feedback,
    as_number,
    as_text,
    exercise,
    not_applicable,
    same_number,
)


@exercise('the name of a variant, e.g. "zero-shot".')
def check_chosen_variant(answer: Any, run: RunFolder) -> Feedback:
    """The baseline variant chosen on the validation split."""
    best = run.read_variants().best
    figures = run.read_results(Step.BASELINE).variants
    said = as_text(answer)
    names = {as_text(name): name for name in figures}
    if said not in names:
        return Feedback(False, f"name one of the variants: {', '.join(figures)}.")
    chosen = figures[best]
    if said == as_text(best):
        return Feedback(
            True,
            f"`{best}` scored best on validation ({chosen.val}); its test score ({chosen.test}) is "
            "reported, and it is the bar the tuned model has to clear.",
        )
    if figures[names[said]].test is not None and figures[names[said]].test == max(
        f.test for f in figures.values() if f.test is not None
    ):
        return Feedback(False, "that one is best on the *test* column; the choice is made on validation.")
    return Feedback(False, "read the validation column of the table; the line below it names the choice.")


WHY_VALIDATION = {  # the options printed in 02's exercise
    "a": "the test split is too small to choose with",
    "b": "a score used to choose is no longer an unbiased estimate: the reported test score would be optimistic",
    "c": "the validation split holds the hard cases",
    "d": "the test split's labels are only read after training",
}


@exercise('one letter, "a" to "d".')
def check_why_choose_on_validation(answer: Any, run: RunFolder) -> Feedback:
    """Why the variant is chosen on validation and test is only reported, with this run's figures as evidence."""
    figures = {
        n: f for n, f in run.read_results(Step.BASELINE).variants.items() if f.val is not None and f.test is not None
    }
    said = as_text(answer)
    if said not in WHY_VALIDATION:
        return Feedback(False, 'answer with one letter, "a" to "d".')
    if said != "b":
        return Feedback(False, "what happens to a score once you have picked the winner *because* it was high?")
    best = run.read_variants().best
    on_test = max(figures, key=lambda n: figures[n].test) if figures else best
    if best in figures and figures[on_test].test > figures[best].test:
        evidence = (
            f"here validation chose `{best}`; on test `{on_test}` looks best ({figures[on_test].test} against "
            f"{figures[best].test}), and choosing it there would have reported the luckiest score"
        )
    else:
        evidence = f"here `{best}` is also best on test, but only validation was allowed to decide"
    return Feedback(
        True, f"picking the best of several on the same examples it is scored on rewards luck; {evidence}."
    )


@exercise("a number: true-escalate tickets the best baseline sent elsewhere.")
def check_escalations_missed(answer: Any, run: RunFolder) -> Feedback:
    """How many tickets of the guarded label (escalate) the best baseline routed elsewhere on test."""
    card = run.read_job_card()
    guarded = card.escalate_label or next(
        (r.actual for r in card.must_never if r.actual in (card.choices or [])), None
    )
    scores = run.read_scores(run.baseline_scores())
    matrix = getattr(scores, "confusion_matrix", None)
    if not card.choices or guarded is None or matrix is None or guarded not in matrix["labels"]:
        return not_applicable("the job has no guarded label, or no confusion matrix")
    labels, rows = matrix["labels"], matrix["matrix"]
    i = labels.index(guarded)
    truth = sum(rows[i]) - rows[i][i]
    said = as_number(answer)
    if said is None:
        return Feedback(False, "answer with a number.")
    if same_number(said, truth):
        return Feedback(
            True,
            f"{truth} of {sum(rows[i])} `{guarded}` tickets went to another team; each is a "
            f"must-never failure (the best baseline has {scores.must_never_failures}, the card allows "
            f"{card.targets.must_never_failures}).",
        )
    if same_number(said, rows[i][i]):
        return Feedback(False, "that is the diagonal cell: the ones it got right. Count the rest of that row.")
    if same_number(said, sum(r[i] for r in rows) - rows[i][i]):
        return Feedback(
            False, f"that is the `{guarded}` column: tickets wrongly *sent* to {guarded}. Rows are the true labels."
        )
    return Feedback(False, f"find the row of the true label `{guarded}` and add every cell off the diagonal.")
