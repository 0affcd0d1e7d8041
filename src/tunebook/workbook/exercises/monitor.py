"""The exercises of 06 · monitor: each check works out the right answer from the run folder."""

from __future__ import annotations

from typing import Any

from tunebook.core.runfolder import RunFolder, Step
from tunebook.monitor.signals import FIRES_BELOW
from tunebook.workbook.exercises.checking import (
    Feedback,
    as_names,
    as_number,
    as_text,
    exercise,
    monitor_readings,
    same_number,
)


@exercise('a list of signal names, e.g. ["text_auc"]; [] if the monitor stayed quiet.')
def check_fired_signals(answer: Any, run: RunFolder) -> Feedback:
    """Which alert rules fired in 06's monitoring pass."""
    results = run.read_results(Step.MONITOR)
    truth = {as_text(name) for name in results.fired}
    said = as_names(answer)
    if said is None:
        return Feedback(False, 'answer with a list of signal names, e.g. ["text_auc"], or [] for none.')
    if said == truth:
        if not results.logged:
            return Feedback(True, "nothing was logged, so nothing was measured and nothing fired.")
        if not results.fired:
            return Feedback(True, f"quiet on {results.logged} logged predictions.")
        readings = {r.signal: r for r in monitor_readings(run) or []}
        shown = "; ".join(
            f"`{n}` {readings[n].value:.3g} against {readings[n].threshold:g}"
            for n in results.fired
            if n in readings and readings[n].value is not None
        )
        return Feedback(True, f"alert on {results.logged} logged predictions: {shown or ', '.join(results.fired)}.")
    return Feedback(False, "read the `fired` column of the signals table (or the first line printed under it).")


@exercise("a number: the text_auc of traffic that looks exactly like the test split.")
def check_text_auc_baseline(answer: Any, run: RunFolder) -> Feedback:
    """The text classifier's AUC when traffic cannot be told from the reference (0.5), with this run's reading."""
    said = as_number(answer)
    if said is None:
        return Feedback(False, "answer with a number between 0 and 1.")
    readings = {r.signal: r for r in monitor_readings(run) or []}
    reading = readings.get("text_auc")
    evidence = (
        f" This run's traffic scored {reading.value:.3f} (the rule fires above {reading.threshold:g})."
        if reading is not None and reading.value is not None
        else ""
    )
    if same_number(said, 0.5, 0.02):
        return Feedback(
            True,
            "0.5: a classifier that cannot tell traffic from the test split ranks a random "
            f"traffic text above a random test text half the time, a coin flip.{evidence}",
        )
    if said >= 0.9:
        return Feedback(
            False,
            "an AUC near 1 means the classifier tells every traffic text from the test split: "
            "the most different, not alike.",
        )
    return Feedback(
        False,
        "the AUC is the chance that a random traffic text scores more 'traffic-like' than a "
        "random test text. If the two look the same, what is that chance?",
    )


LOOSER_P_VALUE = 0.05  # the p-value threshold 06's exercise asks about


@exercise('"more" or "fewer" alerts if every p-value rule fired below 0.05 instead?')
def check_looser_p_values(answer: Any, run: RunFolder) -> Feedback:
    """Whether raising the p-value rules' thresholds fires more or fewer rules, recounted on 06's readings."""

    readings = monitor_readings(run)
    said = {"less": "fewer"}.get(as_text(answer) or "", as_text(answer))
    if said not in ("more", "fewer"):
        return Feedback(False, 'answer "more" or "fewer".')
    before = after = 0
    if readings:
        min_window = run.read_job_card().monitoring.min_window
        for r in readings:
            looser = r.signal in FIRES_BELOW and r.value is not None and r.window >= min_window
            before += r.fired
            after += r.fired or (looser and r.value < LOOSER_P_VALUE)
    truth = "more" if after >= before else "fewer"
    evidence = (
        f" Here {before} rule(s) fired at the card's thresholds; {after} would at {LOOSER_P_VALUE}."
        if readings
        else " (nothing was monitored in this run, so there is nothing to recount.)"
    )
    if said == truth:
        return Feedback(
            True,
            "a p-value rule fires when the p-value falls *below* its threshold, so a higher "
            f"threshold fires sooner: more alerts, more of them false.{evidence}",
        )
    return Feedback(
        False,
        "p-value rules fire below their threshold (the others above). Which p-values are "
        "below 0.05 but not below 0.001?",
    )
