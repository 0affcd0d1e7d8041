"""06_monitor's work: a window of the inference log against the release's reference (its test split and its
predictions there), delayed labels against the release's own figures, and the alert rules that fire."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy.stats import mannwhitneyu

from tunebook.card.schema import JobCard, MonitorRule
from tunebook.card.tasks import task_of
from tunebook.errors import DataError, KnowledgeError, closest
from tunebook.knowledge import read_knowledge
from tunebook.scoring import drift
from tunebook.scoring.metrics import evaluate
from tunebook.scoring.stats import bootstrap, fully_correct, permutation_drop

# Defaults, each chosen to stay quiet on in-distribution traffic (20 resamples of the bundled example's traffic:
# at most one alert) and to fire on a planted shift; a job card's `monitoring.rules` replace them by signal.
DEFAULT_RULES = (
    MonitorRule(signal="length_p_value", threshold=0.001),
    MonitorRule(signal="unseen_word_increase", threshold=0.05),
    MonitorRule(signal="text_auc", threshold=0.65),
    MonitorRule(signal="prediction_p_value", threshold=0.001),
    MonitorRule(signal="prediction_psi", threshold=0.25),
    MonitorRule(signal="confidence_p_value", threshold=0.001),
    MonitorRule(signal="estimated_accuracy_drop", threshold=0.10),
    MonitorRule(signal="labelled_metric_p_value", threshold=0.01),
    MonitorRule(signal="must_never_p_value", threshold=0.01),
    MonitorRule(signal="top_score_p_value", threshold=0.001),
    MonitorRule(signal="no_passage_increase", threshold=0.10),
    MonitorRule(signal="knowledge_mismatch", threshold=0.5),
)
FIRES_BELOW = {
    "top_score_p_value",
    "length_p_value",
    "prediction_p_value",
    "confidence_p_value",
    "labelled_metric_p_value",
    "must_never_p_value",
}

# The population stability index's usual thresholds assume large samples: on a few dozen predictions an answer that
# happens not to appear adds ~0.2 by itself (20 windows of 40 in-distribution tickets: 3 over 0.25). Below this many
# predictions it is shown but raises nothing; the chi-square test, which knows its sample size, covers small windows.
PSI_MIN_WINDOW = 100


def rules_for(card: JobCard) -> list[MonitorRule]:
    """The defaults, with each rule the card's `monitoring` section names replacing the default for its signal."""
    chosen = {rule.signal: rule for rule in DEFAULT_RULES}
    chosen.update({rule.signal: rule for rule in card.monitoring.rules})
    return list(chosen.values())


@dataclass
class Reference:
    """What a release is watched against: its test texts, chosen answers and confidences, its metrics and accuracy,
    and its test predictions (id, text, target and prediction) for the comparison with delayed labels."""

    texts: pd.Series
    answers: pd.Series | None
    confidence: pd.Series | None
    metrics: dict
    accuracy: float
    predictions: pd.DataFrame
    top_scores: pd.Series | None = None  # systems answering from documents: the best passage's score per question


def reference_from(card: JobCard, predictions: pd.DataFrame) -> Reference:
    """The reference from a release's test predictions (columns text, target, prediction, and for fixed answers
    confidence and p_*), as 04_evaluate saved them."""
    correct = fully_correct(card, predictions)
    confidence = predictions["confidence"] if "confidence" in predictions else None
    return Reference(
        texts=predictions["text"].astype(str).reset_index(drop=True),
        answers=_chosen(card, predictions),
        confidence=None if confidence is None else confidence.reset_index(drop=True),
        metrics=evaluate(card, predictions),
        accuracy=float(np.mean(correct)),
        predictions=predictions[["id", "text", "target", "prediction"]].reset_index(drop=True),
        top_scores=predictions["top_score"].astype(float).reset_index(drop=True)
        if "top_score" in predictions
        else None,
    )


def _chosen(card: JobCard, predictions: pd.DataFrame) -> pd.Series | None:
    """Each example's chosen answer among the card's choices (the most probable one where the answer is a call)."""
    if not card.choices:
        return None
    columns = [f"p_{c}" for c in card.choices]
    if not set(columns) <= set(predictions.columns):
        return None
    if set(predictions["prediction"].astype(str)) <= set(card.choices):
        return predictions["prediction"].astype(str).reset_index(drop=True)
    return pd.Series(np.array(card.choices)[predictions[columns].to_numpy().argmax(axis=1)])


def window_frame(log: pd.DataFrame, card: JobCard, size: int) -> pd.DataFrame:
    """The latest ``size`` logged predictions of this job, with the columns the signals read (text, prediction,
    confidence, and for fixed answers p_* and the chosen answer)."""
    rows = log[log["job"] == card.name].tail(size).reset_index(drop=True)
    frame = pd.DataFrame(
        {"id": rows["id"].astype(str), "text": rows["text"], "text_length": rows["text_length"]}
    ).assign(prediction=rows["answer"], confidence=rows["confidence"], model_version=rows["model_version"])
    for column in ("top_score", "knowledge_version"):
        if column in rows:
            frame[column] = rows[column].to_numpy()
    if card.choices and rows["probabilities"].notna().all() and len(rows):
        probabilities = pd.DataFrame(rows["probabilities"].tolist())
        for choice in card.choices:
            frame[f"p_{choice}"] = probabilities.get(choice, 0.0)
        frame["chosen"] = _chosen(card, frame)
    return frame


def with_labels(card: JobCard, window: pd.DataFrame, labels: pd.DataFrame, source: str = "the labels") -> pd.DataFrame:
    """The window's predictions that have a delayed label, with the label as ``target``."""
    return _joined(window, checked_labels(card, labels, source))


def _joined(window: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """The window's predictions that have a checked label (``checked_labels``), with it as ``target``."""
    truth = truth.set_index("id")["target"]
    joined = window[window["id"].isin(truth.index)].copy()
    joined["target"] = joined["id"].map(truth).astype(str)
    joined["tags"] = ""
    return joined.reset_index(drop=True)


def checked_labels(card: JobCard, labels: pd.DataFrame, source: str = "the labels") -> pd.DataFrame:
    """A delayed-labels table as (id, target): each label checked against the job card and written in its
    canonical form, rows with no label yet left out, the last label of an id kept."""

    column = next((c for c in (card.data.label_column, "label", "target") if c in labels.columns), None)
    if "id" not in labels.columns or column is None:
        raise DataError(
            f"{source}: a labels file needs an 'id' column and a '{card.data.label_column}' (or 'label') column; "
            f"it has {', '.join(map(str, labels.columns))}."
        )
    rows, bad = [], []
    for row, (key, raw) in enumerate(zip(labels["id"], labels[column]), start=1):
        if raw is None or (isinstance(raw, float) and np.isnan(raw)) or not str(raw).strip():
            continue  # the label has not arrived yet
        target, problems = task_of(card).parse_target(card, raw, source)
        if card.task_kind == "classification" and target not in card.choices:
            problems = [f"'{target}' is not one of the labels{closest(target, card.choices)}"]
        if problems:
            bad.append(f"row {row} (id {key}): {'; '.join(problems)}")
        rows.append((str(key), target))
    if bad:
        raise DataError(
            f"{source}: {len(bad)} labels do not fit job '{card.name}' ({card.task_kind}): {' | '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}. Is this the labels file of another job? Fix or remove those rows."
        )
    return pd.DataFrame(rows, columns=["id", "target"]).drop_duplicates("id", keep="last")


class SignalReading(BaseModel):
    """One signal measured on one window: its value, the rule's threshold, whether it fired, and the detail."""

    signal: str
    value: float | None
    threshold: float
    window: int
    fired: bool
    note: str = ""
    detail: dict = {}


def measure(
    card: JobCard, reference: Reference, window: pd.DataFrame, truth: pd.DataFrame | None = None
) -> dict[str, tuple[float | None, dict, str]]:
    """Every signal on one window: signal -> (value, detail, note); value None where it cannot be measured here."""
    out: dict[str, tuple[float | None, dict, str]] = {}
    texts = window["text"]
    hashed = texts.isna().any()
    lengths = drift.length_drift(reference.texts.str.len(), window["text_length"])
    out["length_p_value"] = (lengths["p_value"], lengths, "")
    no_text = "the log keeps only hashes of the texts"
    if hashed:
        out["unseen_word_increase"] = (None, {}, no_text)
        out["text_auc"] = (None, {}, no_text)
    else:
        vocabulary = drift.vocabulary_drift(reference.texts, texts.astype(str))
        out["unseen_word_increase"] = (vocabulary["increase"], vocabulary, "")
        auc = drift.text_distance(reference.texts, texts.astype(str))
        out["text_auc"] = (auc["auc"], auc, "")
    if reference.answers is not None and "chosen" in window:
        shares = drift.prediction_drift(card.choices, reference.answers, window["chosen"])
        out["prediction_p_value"] = (shares["p_value"], shares, "")
        out["prediction_psi"] = (shares["psi"], shares, "")
    if reference.confidence is not None and window["confidence"].notna().all():
        confidence = drift.confidence_drift(reference.confidence, window["confidence"].astype(float))
        out["confidence_p_value"] = (confidence["p_value"], confidence, "")
        estimate = drift.estimated_accuracy(
            reference.accuracy, float(reference.confidence.mean()), window["confidence"].astype(float)
        )
        detail = {"reference_accuracy": reference.accuracy, "estimated_accuracy": estimate}
        out["estimated_accuracy_drop"] = (reference.accuracy - estimate, detail, "")
    if reference.top_scores is not None and "top_score" in window and window["top_score"].notna().all():
        out.update(retrieval_health(reference.top_scores, window["top_score"].astype(float)))
    if card.knowledge is not None and "knowledge_version" in window and window["knowledge_version"].notna().any():
        out["knowledge_mismatch"] = knowledge_on_disk(card, window["knowledge_version"].dropna().iloc[-1])
    if truth is not None:
        out.update(_labelled(card, reference, _joined(window, truth)))
    return out


def retrieval_health(reference: pd.Series, window: pd.Series) -> dict[str, tuple[float | None, dict, str]]:
    """Whether retrieval still finds what it found on the test split: a Mann-Whitney test of the best passage's
    score (lower in the window), and the rise in the share of questions whose best passage scores under the test
    split's 5th percentile (questions the documents do not cover)."""
    floor = float(np.quantile(reference, 0.05))
    p_value = (
        float(mannwhitneyu(window, reference, alternative="less").pvalue) if len(window) and len(reference) else 1.0
    )
    share_before, share_now = float((reference < floor).mean()), float((window < floor).mean())
    detail = {
        "reference_median": float(reference.median()),
        "window_median": float(window.median()),
        "floor": floor,
        "share_under_floor_reference": share_before,
        "share_under_floor_window": share_now,
    }
    return {
        "top_score_p_value": (p_value, detail, ""),
        "no_passage_increase": (share_now - share_before, detail, ""),
    }


def knowledge_on_disk(card: JobCard, released: str) -> tuple[float, dict, str]:
    """1.0 when the documents the card names no longer hash to the knowledge version the release answers from (the
    served answers rest on documents that changed since), 0.0 when they match."""
    try:
        current = read_knowledge(card.knowledge.documents, card.knowledge.passage_words).version
    except KnowledgeError as error:
        return 1.0, {"released": released, "on_disk": None}, f"the documents cannot be read: {error}"
    changed = current != released
    note = (
        "the documents changed since this version was released: release the new knowledge version" if changed else ""
    )
    return float(changed), {"released": released, "on_disk": current, "folder": card.knowledge.documents}, note


def _labelled(card: JobCard, reference: Reference, labelled: pd.DataFrame) -> dict:
    """Task metrics on the labelled part of the window against the release's test predictions: a bootstrap interval,
    and a permutation test of the primary metric and the share right (does the window read lower than the test split
    would at its size?)."""
    if len(labelled) < 2:
        return {
            name: (None, {"labelled": len(labelled)}, "too few labelled predictions in the window")
            for name in ("labelled_metric_drop", "labelled_metric_p_value", "must_never_p_value")
        }
    primary = reference.metrics["primary"]
    intervals = bootstrap(card, labelled, resamples=400)
    metrics = evaluate(card, labelled)
    row = intervals.loc[primary]
    detail = {
        "metric": primary,
        "release": float(reference.metrics[primary]),
        "window": float(row["value"]),
        "low": float(row["low"]),
        "high": float(row["high"]),
        "labelled": len(labelled),
        "intervals": intervals.round(4).to_dict(orient="index"),
    }
    test = permutation_drop(card, reference.predictions, labelled, primary)
    detail.update(test)
    out = {
        "labelled_metric_drop": (detail["release"] - detail["high"], detail, ""),
        "labelled_metric_p_value": (test["p_value"], detail, ""),
    }
    if "must_never_failures" in metrics:
        out["must_never_p_value"] = _must_never(metrics["must_never_failures"], len(labelled), reference)
    return out


def _must_never(failures: int, n: int, reference: Reference) -> tuple[float, dict, str]:
    """How surprising the window's must-never failures are at the release's own test rate (one-sided binomial test;
    a release with none on its test split is taken to fail at most half an example's worth, so one failure in a
    small window is not proof of a change but several are)."""
    # deferred: SciPy's statistics load only for a window with must-never failures to test
    from scipy.stats import binomtest

    observed = reference.metrics.get("must_never_failures", 0)
    rate = max(observed, 0.5) / max(1, reference.metrics.get("n", 1))
    p_value = binomtest(int(failures), n, min(rate, 1.0), alternative="greater").pvalue if failures else 1.0
    detail = {"failures": int(failures), "labelled": n, "release_failures": observed, "release_rate": rate}
    return float(p_value), detail, ""


def readings(
    card: JobCard, reference: Reference, log: pd.DataFrame, truth: pd.DataFrame | None = None
) -> list[SignalReading]:
    """Each rule of the card, measured on its own window of the log, and whether it fired; ``truth`` is the
    delayed labels as ``checked_labels`` returns them."""
    rules = rules_for(card)
    measured = {
        size: measure(card, reference, window_frame(log, card, size), truth) for size in {r.window for r in rules}
    }
    out = []
    for rule in rules:
        window = window_frame(log, card, rule.window)
        value, detail, note = measured[rule.window].get(rule.signal, (None, {}, "not measured for this task kind"))
        small = len(window) < card.monitoring.min_window
        if small:
            note = f"only {len(window)} logged predictions (monitoring.min_window is {card.monitoring.min_window})"
        elif rule.signal == "prediction_psi" and len(window) < PSI_MIN_WINDOW:
            small = True
            note = f"only {len(window)} logged predictions: PSI reads high by chance under {PSI_MIN_WINDOW}"
        fired = (
            value is not None
            and not small
            and (value < rule.threshold if rule.signal in FIRES_BELOW else value > rule.threshold)
        )
        out.append(
            SignalReading(
                signal=rule.signal,
                value=value,
                threshold=rule.threshold,
                window=len(window),
                fired=fired,
                note=note,
                detail=detail,
            )
        )
    return out
