"""Task metrics, computed the same way for the baseline and the tuned model."""

from __future__ import annotations

import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core.artifacts import BaselineVerdict, TargetCheck
from tunebook.errors import TunebookError


def evaluate(card: JobCard, predictions: pd.DataFrame) -> dict:
    """The task kind's metrics for a frame of predictions (columns target and prediction)."""

    return task_of(card).metrics(card, predictions)


def per_class_table(metrics: dict) -> pd.DataFrame:
    """Per-class, per-field, per-tool or per-rule figures as a table."""
    for key in ("per_class", "per_tool", "per_field", "per_rule"):
        if key in metrics:
            table = pd.DataFrame(metrics[key]).T
            return table.astype({"support": int}).round(3) if "support" in table else table.round(3)
    raise TunebookError(
        f"these metrics have no per-class, per-tool, per-field or per-rule figures (keys: {', '.join(metrics)}); "
        "pass the metrics of one model as metrics.evaluate returns them."
    )


def headline(metrics: dict) -> dict:
    """The headline figures of a metrics dict, rounded for display."""
    return {
        key: round(metrics[key], 4) if isinstance(metrics[key], float) else metrics[key]
        for key in metrics["headline_keys"]
    }


# card target -> (metric, whether the metric must be at least (True) or at most (False) the target)
_TARGETS = {
    "macro_f1": ("macro_f1", True),
    "accuracy": ("accuracy", True),
    "json_validity": ("json_validity", True),
    "schema_validity": ("schema_validity", True),
    "field_accuracy": ("field_accuracy", True),
    "record_exact_match": ("record_exact_match", True),
    "tool_accuracy": ("tool_accuracy", True),
    "argument_exact_match": ("argument_exact_match", True),
    "max_invalid_call_rate": ("invalid_call_rate", False),
    "rule_pass_rate": ("rule_pass_rate", True),
    "fact_accuracy": ("fact_accuracy", True),
    "groundedness": ("groundedness", True),
    "citation_validity": ("citation_validity", True),
    "abstention": ("abstention", True),
}


def check_targets(card: JobCard, metrics: dict) -> list[TargetCheck]:
    """Each of the card's success targets that applies to these metrics, with the achieved value and whether it is met."""
    checks = []
    for name, (metric, at_least) in _TARGETS.items():
        required = getattr(card.targets, name)
        if required is None or metric not in metrics:
            continue
        achieved = metrics[metric]
        met = achieved >= required if at_least else achieved <= required
        checks.append(
            TargetCheck(
                target=metric,
                required=f"{'>=' if at_least else '<='} {required}",
                achieved=round(achieved, 4),
                met=met,
            )
        )
    limit = card.targets.must_never_failures
    checks.append(
        TargetCheck(
            target="must_never_failures",
            required=f"<= {limit}",
            achieved=metrics["must_never_failures"],
            met=metrics["must_never_failures"] <= limit,
        )
    )
    return checks


def weak_spots(metrics: dict, n: int = 3) -> list[str]:
    """The ``n`` weakest classes, tools, fields or rules, with their score."""
    for key, score in (
        ("per_class", "f1"),
        ("per_tool", "f1"),
        ("per_field", "exact_match"),
        ("per_rule", "pass_rate"),
    ):
        if key in metrics:
            parts = metrics[key]
            worst = sorted(parts, key=lambda part: parts[part][score])[:n]
            return [f"{part} ({score} {parts[part][score]:.2f})" for part in worst]
    return []


def baseline_verdict(
    card: JobCard,
    val_metrics: dict,
    variant: str = "prompting",
    bands: dict | None = None,
    test_metrics: dict | None = None,
) -> BaselineVerdict:
    """Plain-words verdict on the best cheap baseline, judged on the validation split: does it already do the job
    (ship it), or is fine-tuning warranted and where? ``bands`` holds each metric's validation interval (low, high);
    a target met by the estimate but not by the interval's low end is still met, and the verdict says it is close.
    The test figures, if given, are only reported."""
    checks = check_targets(card, val_metrics)
    failed = [c for c in checks if not c.met]
    bands = bands or {}
    close = [
        f"{c.target} {c.achieved} [{bands[c.target][0]:.3f}, {bands[c.target][1]:.3f}] (needs {c.required})"
        for c in checks
        if c.met and c.target in bands and not _meets(c.required, bands[c.target][0])
    ]
    reported = ""
    if test_metrics is not None:
        primary = test_metrics["primary"]
        reported = f" Test {primary}, reported once: {test_metrics[primary]:.3f}."
    if not failed:
        text = (
            f"On validation, the best cheap baseline ({variant}) meets every target on the card: fine-tuning is not "
            f"warranted. Ship {variant}: 04 evaluates it, 05 releases it and 06 watches it; train only if something "
            "the card does not measure demands it (FORCE_TRAINING=true); once it is the champion, an adapter must beat it "
            "beyond chance to replace it."
        )
        if close:
            text += (
                " The validation split is small: for " + "; ".join(close) + " the 95% interval reaches below the "
                "target, so the test split and monitoring decide whether it holds."
            )
    else:
        misses = "; ".join(f"{c.target} {c.achieved} (needs {c.required})" for c in failed)
        text = (
            f"On validation, the best cheap baseline ({variant}) misses {len(failed)} target(s): {misses}. Fine-tuning "
            f"is warranted only if the tuned model beats {variant}, not just prompting; weakest: "
            f"{', '.join(weak_spots(val_metrics))}."
        )
    return BaselineVerdict(
        variant=variant,
        meets_targets=not failed,
        missed=[c.target for c in failed],
        close=close,
        text=text + reported,
    )


def _meets(required: str, value: float) -> bool:
    """Whether ``value`` meets a target written as '>= x' or '<= x'."""
    sign, bound = required.split()
    return value >= float(bound) if sign == ">=" else value <= float(bound)
