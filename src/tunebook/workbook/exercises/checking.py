"""What every exercise check shares: the feedback it returns, the wrapper that gives an unanswered exercise its hint,
and the readers of answers and of the run folder."""

from __future__ import annotations

import functools
import json
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebook.core.runfolder import MonitorFolder, RunFolder, Step
from tunebook.errors import TunebookError
from tunebook.monitor.signals import SignalReading


@dataclass(frozen=True, repr=False)
class Feedback:
    """Whether an answer is right, with the evidence from the run, or a hint when it is not (yet)."""

    right: bool
    message: str

    def __repr__(self) -> str:
        if self.right:
            return f"✓ right: {self.message}"
        if self.message.startswith("not answered yet"):
            return f"✗ {self.message}"
        return f"✗ not yet: {self.message}"

    __str__ = __repr__

    def _repr_markdown_(self) -> str:
        mark, _, message = repr(self).partition(": ")
        return f"**{mark}:** {message}"


Check = Callable[..., Feedback]


def exercise(hint: str) -> Callable[[Check], Check]:
    """Wrap a check: an unanswered ``...`` gets the hint; a run folder that lacks an artifact says which step to run."""

    def wrap(check: Check) -> Check:
        @functools.wraps(check)
        def checked(answer: Any, run: RunFolder | str | Path) -> Feedback:
            if answer is Ellipsis:
                return Feedback(False, f"not answered yet: {hint}")
            try:
                return check(answer, run if isinstance(run, RunFolder) else RunFolder(Path(run)))
            except TunebookError as error:
                return Feedback(False, f"cannot check this yet: {error}")

        checked.hint = hint
        return checked

    return wrap


# ---- reading answers


def as_text(value: Any) -> str | None:
    """A word answer normalised (case, spaces, '_' and '-'), or None if it is not text."""
    if not isinstance(value, str):
        return None
    return " ".join(value.replace("_", " ").replace("-", " ").lower().split())


def as_bool(value: Any) -> bool | None:
    """A yes/no answer (True, False, "yes", "no"), or None if it is neither."""
    if type(value).__name__ == "bool_":
        value = bool(value)  # numpy's
    if isinstance(value, bool):
        return value
    return {"yes": True, "true": True, "no": False, "false": False}.get(as_text(value) or "")


def as_number(value: Any) -> float | None:
    """A numeric answer (a number, or text that is one), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        return float(str(value).strip().rstrip("%")) if isinstance(value, str) else None
    except ValueError:
        return None


def as_names(value: Any) -> set[str] | None:
    """A list of names (a list, tuple or set of text; one text; None or [] for none), normalised, or None."""
    if value is None:
        return set()
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return {as_text(v) for v in value}
    return None


def same_number(answer: float | None, truth: float, tolerance: float = 1e-6) -> bool:
    """Whether a numeric answer equals the truth within an absolute tolerance."""
    return answer is not None and abs(answer - truth) <= tolerance


def judged(said: Any, right: bool, unreadable: str, evidence: str, hint: str) -> Feedback:
    """The ending the checks share: an answer that could not be read gets how to write one, a right one the evidence
    from the run, a wrong one a hint toward the answer."""
    if said is None:
        return Feedback(False, unreadable)
    return Feedback(True, evidence) if right else Feedback(False, hint)


def not_applicable(why: str) -> Feedback:
    """This exercise does not apply to this run's job."""
    return Feedback(False, f"this exercise does not apply to this run: {why}. Skip it.")


# ---- reading the run


def cleaning_report(run: RunFolder) -> list[dict]:
    """Every row 01 listed with a reason (removed, or relabelled by a review decision)."""
    if not run.cleaning_report.is_file():
        raise TunebookError(f"{run.cleaning_report} is missing: run {Step.CLEAN} for this run folder first.")
    return json.loads(run.cleaning_report.read_text(encoding="utf-8"))


def reason_kind(reason: str) -> str:
    """The kind of a cleaning reason, for counting."""
    kinds = (
        ("test-set row", "leak into the frozen test set"),
        ("duplicate of row", "exact duplicate"),
        ("near duplicate", "near duplicate"),
        ("conflicting targets", "conflict"),
        ("empty", "empty row"),
        ("invalid target", "invalid target"),
        ("review decision: relabelled", "relabelled by review"),
        ("review decision", "dropped by review"),
    )
    for marker, kind in kinds:
        if marker in reason and (marker != "duplicate of row" or reason.startswith(marker)):
            return kind
    return reason.split("(")[0].split(":")[0].strip()


def monitor_readings(run: RunFolder) -> list | None:
    """The signals 06's monitoring pass measured (alerts.json), or None if nothing was monitored."""

    results = run.read_results(Step.MONITOR)
    if not results.report:
        return None
    alerts = MonitorFolder((run.root / results.report).parent).alerts
    if not alerts.is_file():
        return None
    raw = json.loads(alerts.read_text(encoding="utf-8"))
    return [SignalReading.model_validate(reading) for reading in raw.get("readings", [])]
