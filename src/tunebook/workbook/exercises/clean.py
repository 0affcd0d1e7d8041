"""The exercises of 01 · clean the data: each check works out the right answer from the run folder."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunebook.core.runfolder import RunFolder, Step
from tunebook.data.neardup import near_duplicate_pairs
from tunebook.workbook.exercises.checking import (
    Feedback,
    as_number,
    as_text,
    cleaning_report,
    exercise,
    judged,
    not_applicable,
    reason_kind,
    same_number,
)


@exercise("a number: every row cleaning removed, whatever the reason.")
def check_rows_removed(answer: Any, run: RunFolder) -> Feedback:
    """How many of the data file's rows cleaning removed (empty, duplicates, conflicts, near duplicates, ...)."""
    version = run.read_dataset_version()
    truth = version.rows_before - version.rows_after
    kinds = Counter(reason_kind(r["reason"]) for r in cleaning_report(run))
    kinds.pop("relabelled by review", None)
    said = as_number(answer)
    if said is None:
        return Feedback(False, "answer with a number.")
    breakdown = ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    if same_number(said, truth):
        found = f": {breakdown}" if breakdown else " (this run's data had no dirt to remove)"
        return Feedback(True, f"{truth} of {version.rows_before} rows removed{found}.")
    near = kinds.get("near duplicate", 0)
    if near and same_number(said, truth - near):
        return Feedback(
            False,
            "that is the first table only; the near duplicates dropped under 'Apply the policy' were removed too.",
        )
    return Feedback(
        False,
        "add up the rows listed under 'Review decisions, empty rows, ...' and the near duplicates "
        "dropped under 'Apply the policy' (the data card lists every one).",
    )


@exercise('"more" or "fewer" near-duplicate pairs at a higher NEAR_DUP_THRESHOLD?')
def check_near_dup_threshold(answer: Any, run: RunFolder) -> Feedback:
    """Whether raising the near-duplicate threshold finds more or fewer pairs, counted on this run's texts."""

    threshold = float(run.read_dataset_version().policy.get("near_dup_threshold", 0.8))
    texts = [t for frame in run.read_splits().values() for t in frame["text"].astype(str)][:5000]
    resent = [" ".join(t.split()[:-1]) for t in texts if len(t.split()) > 4][:50]  # re-sent, last word dropped
    levels = sorted({round(max(0.05, threshold - 0.1), 2), threshold, round(min(1.0, threshold + 0.1), 2)})
    pairs = near_duplicate_pairs(texts + resent, levels[0])  # one pass, then counted per level
    counts = {level: int((pairs["similarity"] >= level - 1e-9).sum()) for level in levels}
    truth = "fewer" if counts[levels[-1]] <= counts[threshold] else "more"
    said = {"less": "fewer"}.get(as_text(answer) or "", as_text(answer))
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


@exercise('"first", "later" or "both": which rows of a conflicting pair does cleaning drop?')
def check_conflict_policy(answer: Any, run: RunFolder) -> Feedback:
    """Which rows of a same-text, different-label pair cleaning holds back, per the recorded policy."""
    policy = str(run.read_dataset_version().policy.get("conflicts", ""))
    truth = {"drop all for review": "both"}.get(policy)
    if truth is None:
        return not_applicable(f"this run's conflict policy is '{policy}'")
    said = {"all": "both", "both rows": "both"}.get(as_text(answer) or "", as_text(answer))
    if said not in ("first", "later", "both"):
        return Feedback(False, 'answer "first", "later" or "both".')
    found = [r["id"] for r in cleaning_report(run) if reason_kind(r["reason"]) == "conflict"]
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


@exercise("a number: near-duplicate pairs with one text in one split and the other in another.")
def check_cross_split_near_duplicates(answer: Any, run: RunFolder) -> Feedback:
    """How many near-duplicate pairs straddle two splits after the leak-free split."""
    truth = run.read_results(Step.CLEAN).cross_split_near_duplicates
    said = as_number(answer)
    return judged(
        said,
        same_number(said, truth),
        "answer with a number.",
        f"{truth}: every group of near-same texts is kept inside one split, so no paraphrase "
        "of a training example can be scored as a test example.",
        "how does the split treat a group of near-same texts? Then read the last line printed "
        "under 'Apply the policy, split without leaks'.",
    )
