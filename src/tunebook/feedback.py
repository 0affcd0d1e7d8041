"""Back to the data: labelled traffic exported as candidate training rows (with where and when each was served),
and how the training data differs from recent traffic (does the dataset still reflect what the model meets?)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunebook import drift, inference_log
from tunebook.data import load_table
from tunebook.errors import DataError
from tunebook.job import JobCard

SOURCE_COLUMN, TIME_COLUMN = "source", "served_at"  # provenance columns of an exported row


def export_labelled_traffic(card: JobCard, log: str | Path, labels: str | Path, out: str | Path) -> pd.DataFrame:
    """Write every logged request that has a delayed label as a row in the card's data format (id, text, label,
    tags = ``traffic``) with its source and time, to ``out`` (CSV, never overwritten); returns the rows."""
    from tunebook.monitor import window_frame, with_labels

    out = Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; exported rows never overwrite a file. Choose another --out.")
    logged, _ = inference_log.read_log(log)
    ours = logged[logged["job"] == card.name].drop_duplicates("id", keep="last")
    if ours["text"].isna().any():
        raise DataError(
            f"{log}: the log keeps only hashes of the texts ({inference_log.TEXT_ENV}=hash), so they cannot become "
            "training rows; export from a log that keeps the texts."
        )
    joined = with_labels(card, window_frame(ours, card, len(ours)), load_table(labels), str(labels))
    served_at = ours.set_index("id")["time"]
    rows = pd.DataFrame(
        {
            card.data.id_column: "traffic-" + joined["id"].astype(str),
            card.data.text_column: joined["text"],
            card.data.label_column: joined["target"],
            card.data.tags_column: "traffic",
            SOURCE_COLUMN: str(log),
            TIME_COLUMN: joined["id"].map(served_at).to_numpy(),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out, index=False)
    return rows


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
