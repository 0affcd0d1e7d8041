"""The inference log: one JSON line per served prediction, appended safely by several server workers, read back
(with every malformed line reported by number) by the monitor."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from tunebook.errors import DataError

LOG_ENV = "TUNEBOOK_INFERENCE_LOG"  # where a served model appends its predictions (unset: no log)
TEXT_ENV = "TUNEBOOK_LOG_TEXT"  # "full" keeps each input's text; "hash" keeps only its sha256 (privacy)
TEXT_MODES = ("full", "hash")


class LoggedPrediction(BaseModel):
    """One served prediction, as a line of the inference log."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    time: str
    job: str
    model_version: str
    id: str
    text: str | None = None  # None when only the hash is kept
    text_sha256: str
    text_length: int
    answer: Any
    confidence: float | None = None
    decision: str | None = None  # "most likely", or "routed" where the card's costs chose a guarded answer
    probabilities: dict[str, float] | None = None
    latency_ms: float
    knowledge_version: str | None = None  # the documents a system answering from them was released with
    retrieved: list[str] | None = None  # the passages it was given, best first
    top_score: float | None = None  # the retriever's score of the best one


def text_hash(text: str) -> str:
    """The sha256 of an input's text: what the log keeps when texts must not be stored."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def log_records(
    job: str,
    version: str,
    answers: pd.DataFrame,
    texts: list[str],
    latency_ms: float,
    keep_text: str = "full",
    knowledge_version: str | None = None,
) -> list[LoggedPrediction]:
    """The log lines for one batch of answers (columns id, prediction, and confidence and p_* where the task has
    them, retrieved and top_score where the system answers from documents), each with the batch's latency per
    example."""
    if keep_text not in TEXT_MODES:
        raise DataError(f"{TEXT_ENV} must be one of {', '.join(TEXT_MODES)}, got '{keep_text}'.")
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    choices = [c.removeprefix("p_") for c in answers.columns if c.startswith("p_")]
    records = []
    for row, text in zip(answers.to_dict("records"), texts):
        probabilities = {c: float(row[f"p_{c}"]) for c in choices} or None
        most_likely = max(probabilities, key=probabilities.get) if probabilities else None
        records.append(
            LoggedPrediction(
                time=stamp,
                job=job,
                model_version=str(version),
                id=str(row["id"]),
                text=text if keep_text == "full" else None,
                text_sha256=text_hash(text),
                text_length=len(text),
                answer=row["prediction"],
                confidence=row.get("confidence"),
                decision=None
                if most_likely is None
                else ("most likely" if row["prediction"] == most_likely else "routed"),
                probabilities=probabilities,
                latency_ms=round(latency_ms, 3),
                knowledge_version=knowledge_version,
                retrieved=list(row["retrieved"]) if "retrieved" in row else None,
                top_score=float(row["top_score"]) if "top_score" in row else None,
            )
        )
    return records


def append(path: str | Path, records: list[LoggedPrediction]) -> None:
    """Append records to the log: one write under an exclusive lock, so concurrent workers never interleave lines."""
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(r.model_dump_json() + "\n" for r in records).encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        written = 0
        while written < len(payload):
            written += os.write(descriptor, payload[written:])
    finally:
        os.close(descriptor)  # closing releases the lock


def read_log(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The log's valid lines as a frame (one row per prediction, in file order) and one message per malformed line,
    naming its number; no valid line is dropped because another is bad."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no inference log at {path}: serve the model with {LOG_ENV} set, or pass the right file.")
    rows, problems = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(LoggedPrediction.model_validate(json.loads(line)).model_dump())
            except (json.JSONDecodeError, ValidationError) as error:
                reason = str(error).splitlines()[0] if isinstance(error, json.JSONDecodeError) else _fields(error)
                problems.append(f"{path}, line {number}: {reason}")
    columns = list(LoggedPrediction.model_fields)
    return pd.DataFrame(rows, columns=columns), problems


def _fields(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in error.errors())
