"""The run's tables on disk: the example columns, the splits and prediction files as JSON lines, and content hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from tunebook.errors import DataError

COLUMNS = ["id", "text", "target", "tags"]
# a knowledge job's examples also carry the article ids each answer rests on, its key facts, and those facts under
# a later version of the documents
KNOWLEDGE_COLUMNS = ["sources", "facts", "fresh_facts"]
# what retrieval adds to an input: the passages' ids, the text the model is shown, the best passage's score
CONTEXT_COLUMNS = ["retrieved", "context", "top_score"]
SPLITS = ("train", "val", "test")


def example_columns(frame: pd.DataFrame) -> list[str]:
    """The example columns ``frame`` holds: id, text, target, tags, then any knowledge columns."""
    return COLUMNS + [c for c in KNOWLEDGE_COLUMNS if c in frame]


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of the example columns, in order."""
    digest = hashlib.sha256()
    for record in frame[example_columns(frame)].to_dict(orient="records"):
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def combined_hash(split_hashes: dict[str, str]) -> str:
    """The dataset version's hash: SHA-256 over the splits' hashes by name."""
    return hashlib.sha256(json.dumps(split_hashes, sort_keys=True).encode()).hexdigest()


def save_splits(splits: dict[str, pd.DataFrame], paths: dict[str, Path]) -> None:
    """Write each split as JSONL (with its source row numbers) to its path."""
    for name, frame in splits.items():
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        frame[["row", *example_columns(frame)]].to_json(paths[name], orient="records", lines=True, force_ascii=False)


def load_splits(paths: dict[str, Path]) -> dict[str, pd.DataFrame]:
    """Read the train/val/test JSONL files written by ``save_splits``."""
    splits = {}
    for name, path in paths.items():
        if not path.is_file():
            raise DataError(f"missing split {path}: run 01_clean_the_data for this run folder first.")
        splits[name] = pd.read_json(
            path, orient="records", lines=True, dtype={"id": str, "text": str, "target": str, "tags": str}
        )
        splits[name]["tags"] = splits[name]["tags"].fillna("").astype(str)
    return splits


def save_predictions(predictions: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame of predictions as JSON lines (UTF-8 kept as is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    predictions.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read predictions written by ``save_predictions`` (ids stay text)."""
    return pd.read_json(path, lines=True, dtype={"id": str})
