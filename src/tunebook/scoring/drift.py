"""How a window of traffic differs from a reference: input drift (length, unseen words, a text classifier's
power to tell them apart), prediction drift (chi-square, population stability index), confidence drift
(Kolmogorov-Smirnov), and a label-free estimate of accuracy from the calibrated confidences."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, ks_2samp

_WORD = re.compile(r"[a-z0-9']+")
_FLOOR = 1e-4  # a share below this counts as this in the stability index (a log of zero is undefined)


def words(text: str) -> list[str]:
    """Lower-case word tokens of a text."""
    return _WORD.findall(text.lower())


def length_drift(reference: pd.Series, window: pd.Series) -> dict:
    """Text lengths in characters: medians and a two-sample Kolmogorov-Smirnov test."""
    ref, new = reference.to_numpy(dtype=float), window.to_numpy(dtype=float)
    test = ks_2samp(ref, new)
    return {
        "reference_median": float(np.median(ref)),
        "window_median": float(np.median(new)),
        "ks": float(test.statistic),
        "p_value": float(test.pvalue),
    }


def unseen_word_rate(vocabulary: set[str], texts: pd.Series) -> float:
    """Share of the word tokens in ``texts`` that are not in ``vocabulary``."""
    tokens = [w for text in texts for w in words(text)]
    return float(np.mean([w not in vocabulary for w in tokens])) if tokens else 0.0


def vocabulary_drift(reference: pd.Series, window: pd.Series, seed: int = 0) -> dict:
    """Unseen-word rate of the window against the reference's vocabulary, next to the rate the reference itself
    shows for a held-out half (what unseen words cost when nothing has changed); the increase is the signal."""
    order = np.random.default_rng(seed).permutation(len(reference))
    half = len(order) // 2
    first, second = reference.iloc[order[:half]], reference.iloc[order[half:]]
    held_out = unseen_word_rate({w for t in first for w in words(t)}, second)
    # the window is compared with the half vocabulary too, so both rates come from a vocabulary of the same size
    window_rate = unseen_word_rate({w for t in first for w in words(t)}, window)
    return {"reference_rate": held_out, "window_rate": window_rate, "increase": window_rate - held_out}


def text_distance(reference: pd.Series, window: pd.Series, seed: int = 0) -> dict:
    """How well a TF-IDF logistic regression tells window texts from reference texts (cross-validated ROC AUC):
    0.5 when they are alike, towards 1 as they drift apart. Each distinct text counts once: a text repeated in the
    traffic (retries, templates) would otherwise sit on both sides of a fold and be recognised, not generalised."""
    # deferred: scikit-learn loads only for the text classifier's AUC, not every monitoring signal
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    reference, window = reference.drop_duplicates(), window.drop_duplicates()
    texts = pd.concat([reference, window], ignore_index=True)
    labels = np.r_[np.zeros(len(reference)), np.ones(len(window))]
    folds = min(5, len(reference), len(window))
    if folds < 2:
        return {"auc": 0.5}
    classifier = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=1000, class_weight="balanced"),
    )
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier, texts, labels, cv=splitter, method="predict_proba")[:, 1]
    # deferred: as above
    from sklearn.metrics import roc_auc_score

    return {"auc": float(roc_auc_score(labels, scores))}


def prediction_drift(choices: list[str], reference: pd.Series, window: pd.Series) -> dict:
    """Answer shares in the reference and the window, a chi-square test of the two counts and the population
    stability index (under 0.1 stable, 0.1-0.25 moving, over 0.25 shifted, by the usual reading)."""
    ref = reference.value_counts().reindex(choices, fill_value=0)
    new = window.value_counts().reindex(choices, fill_value=0)
    seen = (ref + new) > 0
    table = np.vstack([ref[seen].to_numpy(), new[seen].to_numpy()])
    p_value = float(chi2_contingency(table)[1]) if seen.sum() > 1 else 1.0
    p = np.clip(ref.to_numpy() / max(1, ref.sum()), _FLOOR, None)
    q = np.clip(new.to_numpy() / max(1, new.sum()), _FLOOR, None)
    return {
        "reference_share": (ref / max(1, ref.sum())).round(4).to_dict(),
        "window_share": (new / max(1, new.sum())).round(4).to_dict(),
        "p_value": p_value,
        "psi": float(np.sum((q - p) * np.log(q / p))),
    }


def confidence_drift(reference: pd.Series, window: pd.Series) -> dict:
    """Confidence of the chosen answers: means and a two-sample Kolmogorov-Smirnov test."""
    test = ks_2samp(reference.to_numpy(), window.to_numpy())
    return {
        "reference_mean": float(reference.mean()),
        "window_mean": float(window.mean()),
        "ks": float(test.statistic),
        "p_value": float(test.pvalue),
    }


def estimated_accuracy(reference_accuracy: float, reference_confidence: float, window: pd.Series) -> float:
    """Label-free accuracy estimate by the difference of confidences (Guillory et al. 2021): the reference's accuracy
    moved by as much as the mean confidence moved. Exact in expectation for calibrated confidences; the reference's
    own gap between confidence and accuracy is carried over, so a model that is over- or under-confident on the
    reference is corrected by that much."""
    if not len(window):
        return float("nan")
    return float(reference_accuracy - (reference_confidence - window.mean()))
