"""How sure a comparison is: bootstrap intervals, a paired test, slices by tag, flipped examples."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core.artifacts import Overfitting, PairedTest
from tunebook.errors import TunebookError
from tunebook.scoring.metrics import evaluate


def fully_correct(card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
    """Per example: is the whole answer right? The per-example basis of accuracy (classification), record exact match
    (extraction), whole-call exact match (tool selection) and the all-rules pass rate (drafting)."""
    return task_of(card).correct(card, predictions)


def part_correct(card: JobCard, predictions: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per class, tool, field or rule: which examples it covers and whether each of them was right there."""
    return task_of(card).parts(card, predictions)


def aligned(reference: pd.DataFrame, candidate: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames of predictions in the same example order; refuse frames scored on different examples."""
    ids_ref, ids_new = reference["id"].astype(str), candidate["id"].astype(str)
    if ids_ref.duplicated().any() or set(ids_ref) != set(ids_new) or len(ids_ref) != len(ids_new):
        only = sorted(set(ids_ref) ^ set(ids_new))[:5]
        raise TunebookError(
            f"both models must be scored on the same examples (ids differ{', e.g. ' + ', '.join(only) if only else ''}): "
            "score both on the same frozen test split."
        )
    order = {i: k for k, i in enumerate(ids_ref)}
    candidate = (
        candidate.assign(_order=ids_new.map(order)).sort_values("_order").drop(columns="_order").reset_index(drop=True)
    )
    reference = reference.reset_index(drop=True)
    if not (reference["target"].astype(str).to_numpy() == candidate["target"].astype(str).to_numpy()).all():
        raise TunebookError("both models must be scored against the same targets (a target differs for the same id).")
    return reference, candidate


def _one_sided_drop(before: np.ndarray, after: np.ndarray) -> tuple[int, int, float]:
    """Examples broken and fixed going from ``before`` to ``after``, and the exact one-sided p-value of a drop."""
    broken, fixed = int(np.sum(before & ~after)), int(np.sum(~before & after))
    p_value = binomtest(broken, broken + fixed, 0.5, alternative="greater").pvalue if broken + fixed else 1.0
    return broken, fixed, float(p_value)


def part_drops(
    card: JobCard, reference: pd.DataFrame, candidate: pd.DataFrame, tolerance: float = 0.02, alpha: float = 0.05
) -> pd.DataFrame:
    """Per class / tool / field / rule and for whole answers: the paired change from ``reference`` to ``candidate``,
    and whether it is a drop past ``tolerance`` that an exact one-sided McNemar test finds significant at ``alpha``."""
    reference, candidate = aligned(reference, candidate)
    parts = {
        "(whole answers)": (
            np.ones(len(reference), dtype=bool),
            fully_correct(card, reference),
            fully_correct(card, candidate),
        )
    }
    ref_parts, new_parts = part_correct(card, reference), part_correct(card, candidate)
    for name, (mask, right) in ref_parts.items():
        parts[name] = (mask, right, new_parts[name][1])
    rows = []
    for name, (mask, before, after) in parts.items():
        n = int(mask.sum())
        if not n:
            continue
        broken, fixed, p_value = _one_sided_drop(before[mask], after[mask])
        drop = (broken - fixed) / n
        rows.append(
            {
                "part": name,
                "examples": n,
                "reference": float(before[mask].mean()),
                "candidate": float(after[mask].mean()),
                "drop": drop,
                "broken": broken,
                "fixed": fixed,
                "p_value": p_value,
                "significant_drop": bool(drop > tolerance and p_value < alpha),
            }
        )
    return pd.DataFrame(rows).set_index("part")


def bootstrap(
    card: JobCard, predictions: pd.DataFrame, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Each headline metric with a percentile bootstrap interval (examples resampled with replacement)."""
    point = evaluate(card, predictions)
    keys = [k for k in point["headline_keys"] if k != "n"]
    rng = np.random.default_rng(seed)
    n = len(predictions)
    draws = {k: [] for k in keys}
    for _ in range(resamples):
        sample = evaluate(card, predictions.iloc[rng.integers(0, n, n)])
        for k in keys:
            draws[k].append(sample[k])
    tail = (1 - level) / 2 * 100
    return pd.DataFrame(
        {
            k: {
                "value": point[k],
                "low": float(np.percentile(draws[k], tail)),
                "high": float(np.percentile(draws[k], 100 - tail)),
            }
            for k in keys
        }
    ).T


def permutation_drop(
    card: JobCard, before: pd.DataFrame, after: pd.DataFrame, metric: str, permutations: int = 500, seed: int = 0
) -> dict:
    """How surprising it is that ``after`` reads worse than ``before`` if both are samples of one model on one kind
    of input: a one-sided two-sample permutation test (rows reassigned between the two at random, sizes kept), so a
    metric's small-sample bias (macro F1 on 30 examples reads low) sits on both sides of the comparison.

    Two statistics are tested, Bonferroni-corrected: ``metric`` (sees a drop confined to a rare class) and the share
    of fully correct examples (per example, so it has far more power on a few dozen labels)."""
    columns = [c for c in ("id", "text", "target", "prediction") if c in before and c in after]  # drafting reads text
    pool = pd.concat([before[columns], after[columns]], ignore_index=True)
    n = len(before)
    correct = np.asarray(fully_correct(card, pool), dtype=float)

    def drops(order: np.ndarray) -> tuple[float, float]:
        first, second = pool.iloc[order[:n]], pool.iloc[order[n:]]
        return (
            evaluate(card, first)[metric] - evaluate(card, second)[metric],
            correct[order[:n]].mean() - correct[order[n:]].mean(),
        )

    observed = drops(np.arange(len(pool)))
    rng = np.random.default_rng(seed)
    as_large = np.zeros(2)
    for _ in range(permutations):
        as_large += np.array(drops(rng.permutation(len(pool)))) >= np.array(observed) - 1e-12
    p_metric, p_correct = (1 + as_large) / (1 + permutations)
    return {
        "drop": float(observed[0]),
        "correct_drop": float(observed[1]),
        "metric_p_value": float(p_metric),
        "correct_p_value": float(p_correct),
        "p_value": float(min(1.0, 2 * min(p_metric, p_correct))),
        "permutations": permutations,
    }


def _paired(card: JobCard, baseline: pd.DataFrame, tuned: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Both models' predictions side by side by id, and whether each got each example fully right."""
    baseline, tuned = aligned(baseline, tuned)
    merged = baseline[["id", "text", "target"]].assign(
        prediction_baseline=baseline["prediction"], prediction_tuned=tuned["prediction"]
    )
    return merged, fully_correct(card, baseline), fully_correct(card, tuned)


def mcnemar(card: JobCard, baseline: pd.DataFrame, tuned: pd.DataFrame, alpha: float = 0.05) -> PairedTest:
    """Exact McNemar test on fully-correct answers of two models over the same examples, with a verdict in words."""
    merged, right_before, right_after = _paired(card, baseline, tuned)
    fixed = int(np.sum(~right_before & right_after))
    broken = int(np.sum(right_before & ~right_after))
    p_value = binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    if p_value < alpha:
        verdict = (
            f"The difference is real: tuning fixed {fixed} and broke {broken} of {len(merged)} examples "
            f"(exact McNemar p = {p_value:.3g} < {alpha}); the tuned model is {'better' if fixed > broken else 'worse'}."
        )
    else:
        verdict = (
            f"The difference could be chance: tuning fixed {fixed} and broke {broken} of {len(merged)} examples "
            f"(exact McNemar p = {p_value:.3g} >= {alpha}). More test examples would settle it."
        )
    return PairedTest(
        n=len(merged),
        fixed=fixed,
        broken=broken,
        p_value=float(p_value),
        significant=bool(p_value < alpha),
        verdict=verdict,
    )


def flips(card: JobCard, baseline: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    """Examples one model got fully right and the other did not, side by side."""
    merged, before, after = _paired(card, baseline, tuned)
    merged["flip"] = np.select([~before & after, before & ~after], ["fixed by tuning", "broken by tuning"], "")
    return merged[merged["flip"] != ""].sort_values("flip").reset_index(drop=True)


def slices(card: JobCard, predictions: pd.DataFrame, tag: str = "hard") -> pd.DataFrame:
    """Headline metrics on the examples tagged ``tag`` and on the rest, so a gain only on easy cases shows."""
    tags = predictions["tags"] if "tags" in predictions else pd.Series("", index=predictions.index)
    tagged = tags.fillna("").astype(str).str.split(r"[,;\s]+", regex=True).map(lambda found: tag in found)
    rows = {}
    for name, part in ((tag, predictions[tagged]), (f"not {tag}", predictions[~tagged])):
        if len(part):
            scores = evaluate(card, part)
            rows[name] = {k: scores[k] for k in scores["headline_keys"]}
    return pd.DataFrame(rows).T


def valid_output_rate(card: JobCard, predictions: pd.DataFrame) -> float:
    """Share of outputs a program can use: a known label, schema-valid JSON, a valid tool call, a non-empty draft."""
    return float(task_of(card).usable(card, predictions).mean()) if len(predictions) else 0.0


def overfitting(
    card: JobCard, train_predictions: pd.DataFrame, test_predictions: pd.DataFrame, max_gap: float = 0.15
) -> Overfitting:
    """The primary metric on (a sample of) the train split and on the test split, with a warning past ``max_gap``."""
    train_scores, test_scores = evaluate(card, train_predictions), evaluate(card, test_predictions)
    primary = test_scores["primary"]
    gap = train_scores[primary] - test_scores[primary]
    warning = None
    if gap > max_gap:
        warning = (
            f"{primary} is {train_scores[primary]:.3f} on training examples but {test_scores[primary]:.3f} on the test split "
            f"(gap {gap:.3f} > {max_gap}): the adapter memorised its training data. Train for fewer epochs, lower the "
            "learning rate or the rank, or add examples."
        )
    return Overfitting(
        metric=primary, train=train_scores[primary], test=test_scores[primary], gap=gap, warning=warning
    )


def reliability_table(predictions: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Mean confidence against accuracy per confidence bin (a reliability table; a calibrated model sits on the diagonal)."""
    correct = (predictions["prediction"] == predictions["target"]).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(predictions["confidence"], edges[1:-1]), 0, bins - 1)
    table = pd.DataFrame({"bin": which, "confidence": predictions["confidence"], "correct": correct})
    grouped = table.groupby("bin").agg(
        examples=("correct", "size"), confidence=("confidence", "mean"), accuracy=("correct", "mean")
    )
    grouped.index = [f"{edges[i]:.1f}-{edges[i + 1]:.1f}" for i in grouped.index]
    return grouped


def abstain_threshold(val_predictions: pd.DataFrame, required_accuracy: float) -> dict:
    """The lowest confidence threshold whose kept validation answers reach ``required_accuracy`` (the rest go to a person)."""
    ordered = val_predictions.sort_values("confidence", ascending=False)
    correct = (ordered["prediction"] == ordered["target"]).to_numpy(dtype=float)
    kept_accuracy = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    meets = np.flatnonzero(kept_accuracy >= required_accuracy)
    if not len(meets):
        return {"threshold": None, "coverage": 0.0, "accuracy": None, "required_accuracy": required_accuracy}
    last = meets[-1]  # the most examples kept while still meeting the requirement
    return {
        "threshold": float(ordered["confidence"].iloc[last]),
        "coverage": float((last + 1) / len(ordered)),
        "accuracy": float(kept_accuracy[last]),
        "required_accuracy": required_accuracy,
    }


def apply_threshold(predictions: pd.DataFrame, threshold: float | None) -> dict:
    """Coverage and accuracy on the answers at or above ``threshold`` (the test split's view of the chosen threshold)."""
    if threshold is None:
        return {"coverage": 0.0, "accuracy": None}
    kept = predictions[predictions["confidence"] >= threshold]
    accuracy = float((kept["prediction"] == kept["target"]).mean()) if len(kept) else None
    return {"coverage": len(kept) / len(predictions) if len(predictions) else 0.0, "accuracy": accuracy}


def as_records(tables: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Named tables as plain JSON-ready mappings (row -> column -> value), as the run folder stores them."""
    return {name: json.loads(table.to_json(orient="index")) for name, table in tables.items()}
