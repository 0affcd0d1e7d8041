"""Workshop exercises: one ``check_...`` per exercise at the end of each notebook, and the learner notebooks.

Every check takes the learner's answer and the run folder, works out the right answer from that run's artifacts
(never a number written down here, so it holds for any run: the real model or a tiny test one) and returns
``Feedback``. An answer left as ``...`` gets the hint and never an error. No check trains or re-runs a step; the
costliest one bootstraps one set of predictions.

The notebooks in ``notebooks/`` hold the solutions: a cell tagged ``solution`` assigns each ``answer_NN_x``, as a
literal or as an expression over ``run`` that reads the answer from the run folder. ``python -m tunebook.workbook.exercises``
writes the learner notebooks (``workshop/learner/``): the same notebooks with each solution replaced by
``answer_NN_x = ...`` and the solution line's comment as the hint.
"""

from __future__ import annotations

import argparse
import ast
import functools
import io
import json
import numbers
import sys
import tokenize
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunebook.core.runfolder import MonitorFolder, RunFolder, Step
from tunebook.core.settings import notebooks_dir
from tunebook.data.neardup import near_duplicate_pairs
from tunebook.define.approach import decide_approach
from tunebook.errors import TunebookError
from tunebook.monitor.signals import FIRES_BELOW, SignalReading
from tunebook.scoring.metrics import check_targets
from tunebook.scoring.stats import bootstrap

SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"
LEARNER_DIR = ("workshop", "learner")  # under the repository root, beside notebooks/


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


def _exercise(hint: str) -> Callable[[Check], Check]:
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


def _text(value: Any) -> str | None:
    """A word answer normalised (case, spaces, '_' and '-'), or None if it is not text."""
    if not isinstance(value, str):
        return None
    return " ".join(value.replace("_", " ").replace("-", " ").lower().split())


def _bool(value: Any) -> bool | None:
    """A yes/no answer (True, False, "yes", "no"), or None if it is neither."""
    if type(value).__name__ == "bool_":
        value = bool(value)  # numpy's
    if isinstance(value, bool):
        return value
    return {"yes": True, "true": True, "no": False, "false": False}.get(_text(value) or "")


def _number(value: Any) -> float | None:
    """A numeric answer (a number, or text that is one), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        return float(str(value).strip().rstrip("%")) if isinstance(value, str) else None
    except ValueError:
        return None


def _names(value: Any) -> set[str] | None:
    """A list of names (a list, tuple or set of text; one text; None or [] for none), normalised, or None."""
    if value is None:
        return set()
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return {_text(v) for v in value}
    return None


def _same_number(answer: float | None, truth: float, tolerance: float = 1e-6) -> bool:
    """Whether a numeric answer equals the truth within an absolute tolerance."""
    return answer is not None and abs(answer - truth) <= tolerance


def _not_applicable(why: str) -> Feedback:
    """This exercise does not apply to this run's job."""
    return Feedback(False, f"this exercise does not apply to this run: {why}. Skip it.")


# ---- reading the run


def _cleaning_report(run: RunFolder) -> list[dict]:
    """Every row 01 listed with a reason (removed, or relabelled by a review decision)."""
    if not run.cleaning_report.is_file():
        raise TunebookError(f"{run.cleaning_report} is missing: run {Step.CLEAN} for this run folder first.")
    return json.loads(run.cleaning_report.read_text(encoding="utf-8"))


def _reason_kind(reason: str) -> str:
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


def _monitor_readings(run: RunFolder) -> list | None:
    """The signals 06's monitoring pass measured (alerts.json), or None if nothing was monitored."""

    results = run.read_results(Step.MONITOR)
    if not results.report:
        return None
    alerts = MonitorFolder((run.root / results.report).parent).alerts
    if not alerts.is_file():
        return None
    raw = json.loads(alerts.read_text(encoding="utf-8"))
    return [SignalReading.model_validate(reading) for reading in raw.get("readings", [])]


# ---- 00 · define the job


@_exercise('a pair (true label, predicted label), e.g. ("billing", "technical"); read the cost matrix row by row.')
def check_costliest_mistake(answer: Any, run: RunFolder) -> Feedback:
    """The mistake (true, predicted) that costs the most under the card's error costs."""
    card = run.read_job_card()
    if not card.choices:
        return _not_applicable(f"a {card.task_kind} job has no cost matrix")
    costs = {(t, p): card.error_cost(t, p) for t in card.choices for p in card.choices if t != p}
    top = max(costs.values())
    pair = tuple(_text(v) for v in answer) if isinstance(answer, (tuple, list)) and len(answer) == 2 else None
    labels = {_text(c): c for c in card.choices}
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


@_exercise("True or False: would the frame still recommend fine-tuning?")
def check_frame_if_prompting_suffices(answer: Any, run: RunFolder) -> Feedback:
    """Whether the decision frame still recommends training when better prompting would solve most of the job."""

    card = run.read_job_card()
    changed = card.model_copy(update={"decision": card.decision.model_copy(update={"prompting_solves_most": True})})
    decision = decide_approach(changed)
    said = _bool(answer)
    if said is None:
        return Feedback(False, "answer True (it still recommends fine-tuning) or False.")
    if said == decision.proceed_to_training:
        return Feedback(
            True, f"with `prompting_solves_most: true` the frame says {decision.approach}: {decision.reasons[-1]}"
        )
    return Feedback(
        False,
        "if prompting already solves most of it, what would training buy? Try it: "
        "`approach.decide_approach(card.model_copy(update=...))` with that one answer changed.",
    )


@_exercise("True or False: does that model meet the card's targets?")
def check_targets_with_one_must_never(answer: Any, run: RunFolder) -> Feedback:
    """Whether a model with 0.97 accuracy and macro-F1 but one must-never failure meets the card's targets."""

    card = run.read_job_card()
    checks = check_targets(card, {"accuracy": 0.97, "macro_f1": 0.97, "must_never_failures": 1})
    truth = all(c["met"] for c in checks)
    said = _bool(answer)
    if said is None:
        return Feedback(False, "answer True (it meets every target) or False.")
    table = "; ".join(
        f"{c['target']} {c['achieved']} (needs {c['required']}): {'met' if c['met'] else 'missed'}" for c in checks
    )
    if said == truth:
        return Feedback(True, f"{table}. No average excuses a must-never failure: it is counted on its own.")
    return Feedback(
        False, "look at the card's targets: besides accuracy and F1, how many must-never failures does it allow?"
    )


# ---- 01 · clean the data


@_exercise("a number: every row cleaning removed, whatever the reason.")
def check_rows_removed(answer: Any, run: RunFolder) -> Feedback:
    """How many of the data file's rows cleaning removed (empty, duplicates, conflicts, near duplicates, ...)."""
    version = run.read_dataset_version()
    truth = version.rows_before - version.rows_after
    kinds = Counter(_reason_kind(r["reason"]) for r in _cleaning_report(run))
    kinds.pop("relabelled by review", None)
    said = _number(answer)
    if said is None:
        return Feedback(False, "answer with a number.")
    breakdown = ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    if _same_number(said, truth):
        found = f": {breakdown}" if breakdown else " (this run's data had no dirt to remove)"
        return Feedback(True, f"{truth} of {version.rows_before} rows removed{found}.")
    near = kinds.get("near duplicate", 0)
    if near and _same_number(said, truth - near):
        return Feedback(
            False,
            "that is the first table only; the near duplicates dropped under 'Apply the policy' were removed too.",
        )
    return Feedback(
        False,
        "add up the rows listed under 'Review decisions, empty rows, ...' and the near duplicates "
        "dropped under 'Apply the policy' (the data card lists every one).",
    )


@_exercise('"more" or "fewer" near-duplicate pairs at a higher NEAR_DUP_THRESHOLD?')
def check_near_dup_threshold(answer: Any, run: RunFolder) -> Feedback:
    """Whether raising the near-duplicate threshold finds more or fewer pairs, counted on this run's texts."""

    threshold = float(run.read_dataset_version().policy.get("near_dup_threshold", 0.8))
    texts = [t for frame in run.read_splits().values() for t in frame["text"].astype(str)][:5000]
    resent = [" ".join(t.split()[:-1]) for t in texts if len(t.split()) > 4][:50]  # re-sent, last word dropped
    levels = sorted({round(max(0.05, threshold - 0.1), 2), threshold, round(min(1.0, threshold + 0.1), 2)})
    pairs = near_duplicate_pairs(texts + resent, levels[0])  # one pass, then counted per level
    counts = {level: int((pairs["similarity"] >= level - 1e-9).sum()) for level in levels}
    truth = "fewer" if counts[levels[-1]] <= counts[threshold] else "more"
    said = {"less": "fewer"}.get(_text(answer) or "", _text(answer))
    if said not in ("more", "fewer"):
        return Feedback(False, 'answer "more" or "fewer".')
    if said != truth:
        return Feedback(
            False,
            "the threshold is the least word-shingle similarity two texts need to count as near "
            "duplicates. Does asking for more similarity let more pairs through, or fewer?",
        )
    shown = ", ".join(f">= {level:g}: {n}" for level, n in counts.items())
    return Feedback(
        True,
        f"a higher threshold asks two texts to be more alike, so fewer pairs qualify (never "
        f"more). This run's {len(texts)} texts, plus {len(resent)} of them re-sent with the last word "
        f"dropped, give these pairs at similarity {shown}.",
    )


@_exercise('"first", "later" or "both": which rows of a conflicting pair does cleaning drop?')
def check_conflict_policy(answer: Any, run: RunFolder) -> Feedback:
    """Which rows of a same-text, different-label pair cleaning holds back, per the recorded policy."""
    policy = str(run.read_dataset_version().policy.get("conflicts", ""))
    truth = {"drop all for review": "both"}.get(policy)
    if truth is None:
        return _not_applicable(f"this run's conflict policy is '{policy}'")
    said = {"all": "both", "both rows": "both"}.get(_text(answer) or "", _text(answer))
    if said not in ("first", "later", "both"):
        return Feedback(False, 'answer "first", "later" or "both".')
    found = [r["id"] for r in _cleaning_report(run) if _reason_kind(r["reason"]) == "conflict"]
    evidence = f"here: {', '.join(map(str, found))}" if found else "this run's data had no conflicts"
    if said == truth:
        return Feedback(
            True,
            f"policy '{policy}': the data cannot say which label is right, so every row of the "
            f"text waits for a person ({evidence}).",
        )
    return Feedback(
        False,
        "a duplicate keeps its first row because both rows agree. When they disagree, which "
        "one is right? Read the recorded policy in `run.read_dataset_version().policy`.",
    )


@_exercise("a number: near-duplicate pairs with one text in one split and the other in another.")
def check_cross_split_near_duplicates(answer: Any, run: RunFolder) -> Feedback:
    """How many near-duplicate pairs straddle two splits after the leak-free split."""
    truth = run.read_results(Step.CLEAN).cross_split_near_duplicates
    said = _number(answer)
    if said is None:
        return Feedback(False, "answer with a number.")
    if _same_number(said, truth):
        return Feedback(
            True,
            f"{truth}: every group of near-same texts is kept inside one split, so no paraphrase "
            "of a training example can be scored as a test example.",
        )
    return Feedback(
        False,
        "how does the split treat a group of near-same texts? Then read the last line printed "
        "under 'Apply the policy, split without leaks'.",
    )


# ---- 02 · prove the baseline


@_exercise('the name of a variant, e.g. "zero-shot".')
def check_chosen_variant(answer: Any, run: RunFolder) -> Feedback:
    """The baseline variant chosen on the validation split."""
    best = run.read_variants().best
    figures = run.read_results(Step.BASELINE).variants
    said = _text(answer)
    names = {_text(name): name for name in figures}
    if said not in names:
        return Feedback(False, f"name one of the variants: {', '.join(figures)}.")
    chosen = figures[best]
    if said == _text(best):
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


@_exercise('one letter, "a" to "d".')
def check_why_choose_on_validation(answer: Any, run: RunFolder) -> Feedback:
    """Why the variant is chosen on validation and test is only reported, with this run's figures as evidence."""
    figures = {
        n: f for n, f in run.read_results(Step.BASELINE).variants.items() if f.val is not None and f.test is not None
    }
    said = _text(answer)
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


@_exercise("a number: true-escalate tickets the best baseline sent elsewhere.")
def check_escalations_missed(answer: Any, run: RunFolder) -> Feedback:
    """How many tickets of the guarded label (escalate) the best baseline routed elsewhere on test."""
    card = run.read_job_card()
    guarded = card.escalate_label or next(
        (r.actual for r in card.must_never if r.actual in (card.choices or [])), None
    )
    scores = run.read_scores(run.baseline_scores())
    matrix = getattr(scores, "confusion_matrix", None)
    if not card.choices or guarded is None or matrix is None or guarded not in matrix["labels"]:
        return _not_applicable("the job has no guarded label, or no confusion matrix")
    labels, rows = matrix["labels"], matrix["matrix"]
    i = labels.index(guarded)
    truth = sum(rows[i]) - rows[i][i]
    said = _number(answer)
    if said is None:
        return Feedback(False, "answer with a number.")
    if _same_number(said, truth):
        return Feedback(
            True,
            f"{truth} of {sum(rows[i])} `{guarded}` tickets went to another team; each is a "
            f"must-never failure (the best baseline has {scores.must_never_failures}, the card allows "
            f"{card.targets.must_never_failures}).",
        )
    if _same_number(said, rows[i][i]):
        return Feedback(False, "that is the diagonal cell: the ones it got right. Count the rest of that row.")
    if _same_number(said, sum(r[i] for r in rows) - rows[i][i]):
        return Feedback(
            False, f"that is the `{guarded}` column: tickets wrongly *sent* to {guarded}. Rows are the true labels."
        )
    return Feedback(False, f"find the row of the true label `{guarded}` and add every cell off the diagonal.")


# ---- 03 · train


@_exercise("True or False: is the validation loss after training lower than before?")
def check_validation_loss(answer: Any, run: RunFolder) -> Feedback:
    """Whether training lowered the validation loss (the manifest's before and after)."""
    manifest = run.read_manifest()
    truth = manifest.val_loss_after < manifest.val_loss_before
    said = _bool(answer)
    if said is None:
        return Feedback(False, "answer True or False.")
    figures = (
        f"validation loss {manifest.val_loss_before:.4f} before training, {manifest.val_loss_after:.4f} "
        f"after (best step {manifest.best_step} of {manifest.steps})"
    )
    if said == truth:
        return Feedback(
            True,
            figures
            + (
                "; a lower loss is not yet a better job: 04 judges that."
                if truth
                else "; the adapter did not learn the job yet: more steps or data?"
            ),
        )
    return Feedback(
        False, "compare the two numbers printed after training: 'validation loss: X before training -> Y after'."
    )


@_exercise("a number: by what factor do the trainable parameters change when LORA_R doubles?")
def check_lora_rank_doubled(answer: Any, run: RunFolder) -> Feedback:
    """The factor by which doubling the LoRA rank changes the trainable parameters (2; 1 for a full fine-tune)."""
    manifest = run.read_manifest()
    trainable, r = manifest.trainable_parameters, manifest.config.get("lora_r")
    truth = 1.0 if manifest.full_fine_tune else 2.0
    said = _number(answer)
    if said is None:
        return Feedback(False, "answer with a number, e.g. 4.")
    if manifest.full_fine_tune:
        if _same_number(said, truth):
            return Feedback(True, f"this run trained every weight ({trainable:,}); LORA_R does not apply.")
        return Feedback(
            False,
            "this run trained every weight (METHOD full), with no adapter: does LORA_R change how many weights train?",
        )
    if _same_number(said, truth):
        return Feedback(
            True,
            f"each adapted layer gains r x (inputs + outputs) weights, linear in r: this run's "
            f"r = {r} trains {trainable:,}, r = {2 * r} would train {2 * trainable:,}.",
        )
    return Feedback(
        False,
        "LoRA adds two thin matrices per layer, A (r x inputs) and B (outputs x r). How does their size grow with r?",
    )


@_exercise("a number: the factor by which the adapter's scale (LORA_ALPHA / LORA_R) changes when LORA_R doubles.")
def check_lora_scaling(answer: Any, run: RunFolder) -> Feedback:
    """The factor by which doubling r (same alpha) changes the adapter's scale alpha / r, from the manifest."""
    config = run.read_manifest().config
    alpha, r = config.get("lora_alpha"), config.get("lora_r")
    if not alpha or not r:
        return _not_applicable("the manifest records no LoRA rank or alpha")
    now, doubled = alpha / r, alpha / (2 * r)
    truth = doubled / now
    said = _number(answer)
    if said is None:
        return Feedback(False, "answer with a number, e.g. 4.")
    if not _same_number(said, truth, 1e-3):
        return Feedback(
            False,
            "the update is multiplied by LORA_ALPHA / LORA_R. What happens to a fraction when "
            "its denominator doubles?",
        )
    note = " (this run trained every weight, so no adapter was scaled)" if config.get("method") == "full" else ""
    return Feedback(
        True,
        f"this run's scale is alpha {alpha} / r {r} = {now:g}; with r = {2 * r} it would be "
        f"{doubled:g}{note}. Twice the capacity speaks half as loud unless alpha doubles too, which is "
        "why the two are set together.",
    )


# ---- 04 · evaluate


@_exercise("True or False: is the difference to the best baseline real at the 5% level?")
def check_difference_is_real(answer: Any, run: RunFolder) -> Feedback:
    """Whether McNemar's test says the tuned model differs from the best baseline (p < 0.05)."""
    test = run.read_comparison().mcnemar
    if test.get("p_value") is None:
        return _not_applicable("04 ran no paired test against the baseline")
    truth = bool(test.get("significant", test["p_value"] < 0.05))
    said = _bool(answer)
    if said is None:
        return Feedback(False, "answer True or False.")
    if said == truth:
        return Feedback(True, test.get("verdict", f"p = {test['p_value']:.3g}"))
    return Feedback(
        False,
        "read the line 'against the best baseline': p below 0.05 means the difference is real; "
        "above, it could be chance, however different the two scores look.",
    )


@_exercise("a number: the test examples McNemar's test actually counts.")
def check_mcnemar_examples(answer: Any, run: RunFolder) -> Feedback:
    """How many examples McNemar's test uses: those where exactly one of the two models is right."""
    test = run.read_comparison().mcnemar
    if "fixed" not in test:
        return _not_applicable("04 ran no paired test against the baseline")
    truth = test["fixed"] + test["broken"]
    said = _number(answer)
    if said is None:
        return Feedback(False, "answer with a number.")
    if _same_number(said, truth):
        return Feedback(
            True,
            f"only the {truth} examples where the models disagree count ({test['fixed']} fixed, "
            f"{test['broken']} broken); the other {test['n'] - truth} say nothing about which model "
            "is better.",
        )
    if _same_number(said, test["n"]):
        return Feedback(
            False, "that is every test example. Do the ones both models got right tell you which is better?"
        )
    return Feedback(False, "the verdict line says how many examples tuning fixed and how many it broke.")


@_exercise('"narrower" or "wider": the interval on a test split four times as large?')
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
    said = {"smaller": "narrower", "tighter": "narrower", "larger": "wider"}.get(_text(answer) or "", _text(answer))
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


# ---- 05 · release


@_exercise('a list of target names, e.g. ["accuracy"]; [] if every target is met.')
def check_targets_missed(answer: Any, run: RunFolder) -> Feedback:
    """Which of the card's targets the tuned model still misses (the gate's target checks)."""
    gate = run.read_gate()
    truth = {_text(name.removeprefix("target:")) for name in gate.targets_missed}
    said = _names(answer)
    if said is None:
        return Feedback(False, 'answer with a list of names, e.g. ["accuracy"], or [] for none.')
    said = {_text(name.removeprefix("target:")) for name in said}
    if said == truth:
        missed = ", ".join(n.removeprefix("target:") for n in gate.targets_missed) or "none"
        return Feedback(True, f"missed: {missed}. Shown, not blocking, unless 05 runs with REQUIRE_TARGETS.")
    return Feedback(
        False,
        f"you named {len(said)}; check the `met` column of the targets table under 'Tuned vs "
        "baseline' (or the gate's `target:` rows).",
    )


@_exercise(
    'a pair ("yes" or "no", the gate check that decides it), e.g. ("no", "parity"); ("yes", None) if it passed.'
)
def check_promotion(answer: Any, run: RunFolder) -> Feedback:
    """Whether to promote this version (must match the gate) and the blocking check that decides it."""
    gate = run.read_gate()
    decision, reason = answer if isinstance(answer, (tuple, list)) and len(answer) == 2 else (answer, None)
    said = _bool(decision)
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
    failed = {_text(name): name for name in gate.failed}
    named = _text(reason) if isinstance(reason, str) else None
    if named in failed or any(named and name in named for name in failed):
        return Feedback(True, f"not promoted: {', '.join(gate.failed)} failed against {gate.reference}{done}.")
    return Feedback(
        False,
        "right decision; now name the blocking check that failed (a row of the gate table with "
        "passed False and blocking True).",
    )


@_exercise("True or False: can REQUIRE_TARGETS = True turn a failing gate into a passing one?")
def check_require_targets(answer: Any, run: RunFolder) -> Feedback:
    """Whether requiring the card's targets can ever let a failing release through (it only adds blocking checks)."""
    gate = run.read_gate()
    passes_with_targets = gate.passed and not gate.targets_missed
    truth = passes_with_targets and not gate.passed  # never: the blocking checks only grow
    said = _bool(answer)
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


# ---- 06 · monitor


@_exercise('a list of signal names, e.g. ["text_auc"]; [] if the monitor stayed quiet.')
def check_fired_signals(answer: Any, run: RunFolder) -> Feedback:
    """Which alert rules fired in 06's monitoring pass."""
    results = run.read_results(Step.MONITOR)
    truth = {_text(name) for name in results.fired}
    said = _names(answer)
    if said is None:
        return Feedback(False, 'answer with a list of signal names, e.g. ["text_auc"], or [] for none.')
    if said == truth:
        if not results.logged:
            return Feedback(True, "nothing was logged, so nothing was measured and nothing fired.")
        if not results.fired:
            return Feedback(True, f"quiet on {results.logged} logged predictions.")
        readings = {r.signal: r for r in _monitor_readings(run) or []}
        shown = "; ".join(
            f"`{n}` {readings[n].value:.3g} against {readings[n].threshold:g}"
            for n in results.fired
            if n in readings and readings[n].value is not None
        )
        return Feedback(True, f"alert on {results.logged} logged predictions: {shown or ', '.join(results.fired)}.")
    return Feedback(False, "read the `fired` column of the signals table (or the first line printed under it).")


@_exercise("a number: the text_auc of traffic that looks exactly like the test split.")
def check_text_auc_baseline(answer: Any, run: RunFolder) -> Feedback:
    """The text classifier's AUC when traffic cannot be told from the reference (0.5), with this run's reading."""
    said = _number(answer)
    if said is None:
        return Feedback(False, "answer with a number between 0 and 1.")
    readings = {r.signal: r for r in _monitor_readings(run) or []}
    reading = readings.get("text_auc")
    evidence = (
        f" This run's traffic scored {reading.value:.3f} (the rule fires above {reading.threshold:g})."
        if reading is not None and reading.value is not None
        else ""
    )
    if _same_number(said, 0.5, 0.02):
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


@_exercise('"more" or "fewer" alerts if every p-value rule fired below 0.05 instead?')
def check_looser_p_values(answer: Any, run: RunFolder) -> Feedback:
    """Whether raising the p-value rules' thresholds fires more or fewer rules, recounted on 06's readings."""

    readings = _monitor_readings(run)
    said = {"less": "fewer"}.get(_text(answer) or "", _text(answer))
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


# ---- learner notebooks


def _answer_names(node: ast.stmt) -> list[str]:
    """The names an assignment in a solution cell binds."""
    if not isinstance(node, ast.Assign):
        return []
    names = []
    for target in node.targets:
        elements = target.elts if isinstance(target, ast.Tuple) else [target]
        names += [e.id for e in elements if isinstance(e, ast.Name)]
    return names


def stub_source(solution: str, where: str = "a solution cell") -> str:
    """A solution cell's source as the learner sees it: each answer name assigned ``...`` with the line's hint."""
    tree = ast.parse(solution)
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(solution).readline)
        if token.type == tokenize.COMMENT
    }
    lines = []
    for node in tree.body:
        names = _answer_names(node)
        if not names:
            raise TunebookError(f"{where}: a solution cell holds only answer assignments, found line {node.lineno}.")
        hint = comments.get(node.end_lineno) or comments.get(node.lineno) or ""
        if hint and not hint.startswith("your answer"):
            hint = f"your answer: {hint}"
        lines += [f"{name} = ...  # {hint or 'your answer'}" for name in names]
    if not lines:
        raise TunebookError(f"{where}: a solution cell must assign at least one answer.")
    return "\n".join(lines)


def learner_notebook(notebook: dict, name: str = "notebook") -> dict:
    """The learner's copy of a solution notebook: every ``solution`` cell's source replaced by its stub."""
    copy = json.loads(json.dumps(notebook))
    for cell in copy["cells"]:
        if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = stub_source(source, f"{name}, cell {cell.get('id')}").splitlines(keepends=True)
    return copy


def notebook_text(notebook: dict) -> str:
    """A notebook as the repository stores it: indented, sorted keys, unicode as is, a trailing newline."""
    return json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def _rendered(source_dir: Path) -> dict[str, str]:
    """Each learner notebook's text, by file name."""
    paths = sorted(Path(source_dir).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise TunebookError(f"no notebooks NN_*.ipynb in {source_dir}.")
    return {p.name: notebook_text(learner_notebook(json.loads(p.read_text(encoding="utf-8")), p.name)) for p in paths}


def write_learner_notebooks(source_dir: str | Path, dest_dir: str | Path) -> list[Path]:
    """Write the learner notebooks for the solution notebooks in ``source_dir`` into ``dest_dir``."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in _rendered(Path(source_dir)).items():
        (dest / name).write_bytes(text.encode("utf-8"))  # the same bytes on every platform
        written.append(dest / name)
    return written


def learner_notebooks_out_of_date(source_dir: str | Path, dest_dir: str | Path) -> list[str]:
    """Names of the learner notebooks in ``dest_dir`` that are missing or differ from what would be written now."""
    dest = Path(dest_dir)
    return [
        name
        for name, text in _rendered(Path(source_dir)).items()
        if not (dest / name).is_file() or (dest / name).read_bytes() != text.encode("utf-8")
    ]


def default_dirs() -> tuple[Path, Path]:
    """The solution notebooks (``notebooks/``) and the learner notebooks' folder (``workshop/learner/``)."""

    source = notebooks_dir()
    return source, source.parent.joinpath(*LEARNER_DIR)


def main(argv: list[str] | None = None) -> int:
    """``python -m tunebook.workbook.exercises [--check]``: write the learner notebooks, or say whether they are current."""
    parser = argparse.ArgumentParser(prog="python -m tunebook.workbook.exercises", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any is out of date")
    args = parser.parse_args(argv)
    source, dest = default_dirs()
    if args.check:
        stale = learner_notebooks_out_of_date(source, dest)
        print(f"out of date in {dest}: {', '.join(stale)}" if stale else f"learner notebooks in {dest} are current")
        return 1 if stale else 0
    for path in write_learner_notebooks(source, dest):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
