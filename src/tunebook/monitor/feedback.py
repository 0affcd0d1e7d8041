"""Back to the data: labelled traffic exported as candidate training rows, with where and when each was served (06)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.data.examples import load_table
from tunebook.errors import DataError
from tunebook.monitor.signals import window_frame, with_labels
from tunebook.serving import inference_log

SOURCE_COLUMN, TIME_COLUMN = "source", "served_at"  # provenance columns of an exported row


def export_labelled_traffic(card: JobCard, log: str | Path, labels: str | Path, out: str | Path) -> pd.DataFrame:
    """Write every logged request that has a delayed label as a row in the card's data format (id, text, label,
    tags = ``traffic``) with its source and time, to ``out`` (CSV, never overwritten); returns the rows."""
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
