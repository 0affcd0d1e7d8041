"""How the training data differs from recent traffic: does the dataset still reflect what the model meets? (01)"""

from __future__ import annotations

import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.scoring import drift


def traffic_difference(card: JobCard, train: pd.DataFrame, traffic: pd.DataFrame) -> pd.DataFrame:
    """How the training split differs from recent traffic, one row per signal: text length, unseen words, how well a
    text classifier tells them apart, and (for fixed answers) the share of each answer."""
    lengths = drift.length_drift(train["text"].str.len(), traffic["text"].str.len())
    words = drift.vocabulary_drift(train["text"], traffic["text"])
    auc = drift.text_distance(train["text"], traffic["text"])
    rows = [
        ("median length (characters)", lengths["reference_median"], lengths["window_median"], lengths["p_value"]),
        ("unseen-word rate", words["reference_rate"], words["window_rate"], None),
        ("text classifier AUC (0.5: alike)", 0.5, auc["auc"], None),
    ]
    if card.choices:
        shares = drift.prediction_drift(card.choices, train["target"], traffic["target"])
        rows += [
            (f"share of {c}", shares["reference_share"][c], shares["window_share"][c], None) for c in card.choices
        ]
        rows.append(("answer mix (chi-square)", None, None, shares["p_value"]))
    return pd.DataFrame(rows, columns=["signal", "training", "traffic", "p_value"]).set_index("signal")
