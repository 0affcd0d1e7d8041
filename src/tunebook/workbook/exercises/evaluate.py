"""The exercises of 04 · evaluate: each check works out the right answer from the run folder."""

from __future__ import annotations

from typing import Any

import pandas as pd

from tunebook.core.runfolder import RunFolder
from tunebook.scoring.stats import bootstrap
from tunebook.workbook.exercises.checking import (
    Feedback,
    as_bool,
    as_number,
    as_text,
    exercise,
    judged,
    same_number,
)


@exercise("True or False: is the difference to the best baseline real at the 5% level?")
def check_difference_is_real(answer: Any, run: RunFolder) -> Feedback:
    """Whether McNemar's test says the tuned model differs from the best baseline (p < 0.05)."""
    test = run.read_comparison().mcnemar
    truth = test.significant
    said = as_bool(answer)
    return judged(
        said,
        said == truth,
        "answer True or False.",
        test.verdict,
        "read the line 'against the best baseline': p below 0.05 means the difference is real; "
        "above, it could be chance, however different the two scores look.",
    )


@exercise("a number: the test examples McNemar's test actually counts.")
def check_mcnemar_examples(answer: Any, run: RunFolder) -> Feedback:
    """How many examples McNemar's test uses: those where exactly one of the two models is right."""
    test = run.read_comparison().mcnemar
    truth = test.fixed + test.broken
    said = as_number(answer)
    if said is None:
        return Feedback(False, "answer with a number.")
    if same_number(said, truth):
        return Feedback(
            True,
            f"only the {truth} examples where the models disagree count ({test.fixed} fixed, "
            f"{test.broken} broken); the other {test.n - truth} say nothing about which model "
            "is better.",
        )
    if same_number(said, test.n):
        return Feedback(
            False, "that is every test example. Do the ones both models got right tell you which is better?"
        )
    return Feedback(False, "the verdict line says how many examples tuning fixed and how many it broke.")


@exercise('"narrower" or "wider": the interval on a test split four times as large?')
def check_bigger_test_split(answer: Any, run: RunFolder) -> Feedback:
    """Whether the bootstrap interval narrows on four times the test examples, measured on the tuned predictions."""
    card = run.read_job_card()
    predictions = run.read_predictions(run.tuned_predictions)
    primary = run.read_scores(run.tuned_scores).primary
    widths = {}
    for times in (1, 4):
        row = bootstrap(card, pd.concat([predictions] * times, ignore_index=True), resamples=100).loc[primary]
        widths[times] = (float(row["low"]), float(row["high"]))
    width = {times: high - low for times, (low, high) in widths.items()}
    truth = "narrower" if width[4] <= width[1] else "wider"
    said = {"smaller": "narrower", "tighter": "narrower", "larger": "wider"}.get(
        as_text(answer) or "", as_text(answer)
    )
    if said not in ("narrower", "wider"):
        return Feedback(False, 'answer "narrower" or "wider".')
    low, high = widths[1]
    if said == truth:
        return Feedback(
            True,
            f"{primary} on the {len(predictions)} test examples: [{low:.3f}, {high:.3f}] (width "
            f"{width[1]:.3f}); the same answers four times over: width {width[4]:.3f}. Sampling error "
            "shrinks with the square root of n: four times the examples, about half the width.",
        )
    return Feedback(
        False,
        "the interval shows how much the score would move on another sample of the same size. "
        "Does a bigger sample move more, or less?",
    )
