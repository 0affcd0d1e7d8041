"""The exercises of 05 · release: each check works out the right answer from the run folder."""

from __future__ import annotations

from typing import Any

from tunebook.core.runfolder import RunFolder
from tunebook.workbook.exercises.checking import (
    Feedback,
    as_bool,
    as_names,
    as_text,
    exercise,
)


@exercise('a list of target names, e.g. ["accuracy"]; [] if every target is met.')
def check_targets_missed(answer: Any, run: RunFolder) -> Feedback:
    """Which of the card's targets the tuned model still misses (the gate's target checks)."""
    gate = run.read_gate()
    truth = {as_text(name.removeprefix("target:")) for name in gate.targets_missed}
    said = as_names(answer)
    if said is None:
        return Feedback(False, 'answer with a list of names, e.g. ["accuracy"], or [] for none.')
    said = {as_text(name.removeprefix("target:")) for name in said}
    if said == truth:
        missed = ", ".join(n.removeprefix("target:") for n in gate.targets_missed) or "none"
        return Feedback(True, f"missed: {missed}. Shown, not blocking, unless 05 runs with REQUIRE_TARGETS.")
    return Feedback(
        False,
        f"you named {len(said)}; check the `met` column of the targets table under 'Tuned vs "
        "baseline' (or the gate's `target:` rows).",
    )


@exercise('a pair ("yes" or "no", the gate check that decides it), e.g. ("no", "parity"); ("yes", None) if it passed.')
def check_promotion(answer: Any, run: RunFolder) -> Feedback:
    """Whether to promote this version (must match the gate) and the blocking check that decides it."""
    gate = run.read_gate()
    decision, reason = answer if isinstance(answer, (tuple, list)) and len(answer) == 2 else (answer, None)
    said = as_bool(decision)
    if said is None:
        return Feedback(False, 'answer a pair: ("yes" or "no", the name of the check that decides it).')
    registered = run.read_registered()
    done = (
        ""
        if registered is None
        else (f"; 05 {'promoted' if registered.promoted else 'did not promote'} version {registered.version}")
    )
    if gate.passed:
        if said:
            return Feedback(True, f"every blocking check passed against {gate.reference}{done}.")
        return Feedback(
            False,
            "every blocking check passed. A person may still hold a release back, but the gate "
            "gives no reason to: which row of the gate table says otherwise?",
        )
    if said:
        return Feedback(
            False,
            "a blocking check failed. A person can still force it (`tunebook promote --force "
            "--reason ...`), but then defend it against the failed check: which one failed?",
        )
    failed = {as_text(name): name for name in gate.failed}
    named = as_text(reason) if isinstance(reason, str) else None
    if named in failed or any(named and name in named for name in failed):
        return Feedback(True, f"not promoted: {', '.join(gate.failed)} failed against {gate.reference}{done}.")
    return Feedback(
        False,
        "right decision; now name the blocking check that failed (a row of the gate table with "
        "passed False and blocking True).",
    )


@exercise("True or False: can REQUIRE_TARGETS = True turn a failing gate into a passing one?")
def check_require_targets(answer: Any, run: RunFolder) -> Feedback:
    """Whether requiring the card's targets can ever let a failing release through (it only adds blocking checks)."""
    gate = run.read_gate()
    passes_with_targets = gate.passed and not gate.targets_missed
    truth = passes_with_targets and not gate.passed  # never: the blocking checks only grow
    said = as_bool(answer)
    if said is None:
        return Feedback(False, "answer True or False.")
    if said == truth:
        missed = f" (targets missed: {', '.join(gate.targets_missed)})" if gate.targets_missed else ""
        return Feedback(
            True,
            f"REQUIRE_TARGETS only adds blocking checks: it can stop a release, never let one "
            f"through. Here the gate {'passed' if gate.passed else 'failed'}; with it, it would have "
            f"{'passed' if passes_with_targets else 'failed'}{missed}.",
        )
    return Feedback(
        False, "REQUIRE_TARGETS makes the target rows blocking. Can adding blocking checks let more versions pass?"
    )
