"""A dataset version: cleaned examples split without leaks (stratified, near duplicates kept together, or around a
frozen test file), hashed split by split, and written as JSON lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core.artifacts import DatasetVersion, SourceFile, SplitVersion
from tunebook.core.tables import SPLITS, combined_hash, file_hash, frame_hash
from tunebook.errors import DataError


def stratum(card: JobCard, target: str) -> str:
    """The group a target is stratified by: its label, its tool, or one group for free-form targets."""

    return task_of(card).stratum(card, target)


def _allocate(
    examples: pd.DataFrame, card: JobCard, held_out: dict[str, float], seed: int, groups: np.ndarray | None
) -> dict[str, pd.DataFrame]:
    """Per label (or tool), give each held-out part its share (at least one row) and the rest to train."""
    strata = examples["target"].map(lambda t: stratum(card, t))
    counts = strata.value_counts()
    too_rare = counts[counts < len(held_out) + 1]
    if len(too_rare):
        raise DataError(
            f"labels or tools with fewer than {len(held_out) + 1} clean examples cannot be split into train/"
            f"{'/'.join(held_out)}: {too_rare.to_dict()}. Add examples for them or remove them from the job card."
        )
    # Per-label allocation (rather than sklearn's train_test_split) keeps every label in every split,
    # which small jobs need and which sklearn's stratification does not guarantee.
    rng = np.random.default_rng(seed)
    assignment = pd.Series("train", index=examples.index)
    for _, group in examples.groupby(strata, sort=True):
        order = group.index.to_numpy()[rng.permutation(len(group))]
        start = 0
        for name, fraction in held_out.items():
            size = max(1, round(len(group) * fraction))
            assignment[order[start : start + size]] = name
            start += size
    if groups is not None:
        # every member of a near-duplicate group follows the group's first row, so no group spans two splits
        leader = pd.Series(examples.index, index=examples.index).groupby(np.asarray(groups)).transform("min")
        assignment = pd.Series(assignment[leader].to_numpy(), index=examples.index)
    names = ["train", *held_out]
    return {name: examples[assignment == name].sort_values("row").reset_index(drop=True) for name in names}


def split(
    examples: pd.DataFrame,
    card: JobCard,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, pd.DataFrame]:
    """Split into train/val/test, stratified by label (or tool); rows sharing a group (near duplicates) share a split."""
    for name, value in (("TEST_FRACTION", test_fraction), ("VAL_FRACTION", val_fraction)):
        if not 0 < value < 1:
            raise DataError(f"{name} must be between 0 and 1, got {value}.")
    if test_fraction + val_fraction >= 1:
        raise DataError(f"TEST_FRACTION + VAL_FRACTION must be below 1, got {test_fraction + val_fraction}.")
    parts = _allocate(examples, card, {"test": test_fraction, "val": val_fraction}, seed, groups)
    return {name: parts[name] for name in SPLITS}


def split_with_frozen_test(
    examples: pd.DataFrame,
    frozen_test: pd.DataFrame,
    card: JobCard,
    val_fraction: float = 0.1,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, pd.DataFrame]:
    """Keep a user-supplied test set exactly as given; split the rest into train/val only."""
    if len(frozen_test) == 0:
        raise DataError("the frozen test set (TEST_FILE) has no rows.")
    if not 0 < val_fraction < 1:
        raise DataError(f"VAL_FRACTION must be between 0 and 1, got {val_fraction}.")
    parts = _allocate(examples, card, {"val": val_fraction}, seed, groups)
    return {
        "train": parts["train"],
        "val": parts["val"],
        "test": frozen_test.sort_values("row").reset_index(drop=True),
    }


def dataset_version(
    splits: dict[str, pd.DataFrame],
    source: str | Path,
    policy: dict,
    counts_before: int,
    test_source: str | Path | None = None,
) -> DatasetVersion:
    """Describe the dataset version: per-split hashes, source hash, policy and counts.

    ``rows_before`` and ``rows_after`` count the card's data file; a frozen test set (``test_source``) is counted
    on its own, since none of its rows came from that file.
    """
    split_hashes = {name: frame_hash(frame) for name, frame in splits.items()}
    combined = combined_hash(split_hashes)
    from_source = [name for name in splits if not (test_source and name == "test")]
    return DatasetVersion(
        hash=combined,
        splits={name: SplitVersion(hash=split_hashes[name], rows=len(frame)) for name, frame in splits.items()},
        source=SourceFile(path=str(source), sha256=file_hash(source)),
        policy=policy,
        rows_before=counts_before,
        rows_after=sum(len(splits[name]) for name in from_source),
        test_source=(
            SourceFile(path=str(test_source), sha256=file_hash(test_source), rows=len(splits["test"]))
            if test_source
            else None
        ),
    )


def split_table(card: JobCard, splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Examples per label (or tool) in each split, with totals."""
    table = (
        pd.DataFrame(
            {name: frame["target"].map(lambda t: stratum(card, t)).value_counts() for name, frame in splits.items()}
        )
        .fillna(0)
        .astype(int)
    )
    table.loc["total"] = table.sum()
    return table
