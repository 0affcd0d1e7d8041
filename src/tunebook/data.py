"""Loading, validating, cleaning, splitting and versioning the examples."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from tunebook.errors import DataError, closest
from tunebook.job import JobCard
from tunebook.outputs import canonical, target_problems

COLUMNS = ["id", "text", "target", "tags"]
SPLITS = ("train", "val", "test")


BAD_LINE_POLICIES = ("error", "skip")


def _read_jsonl(path: Path, bad_lines: str, skipped: list[dict]) -> pd.DataFrame:
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                problem = (
                    None
                    if isinstance(record, dict)
                    else f"expected a JSON object per line, got {type(record).__name__}"
                )
            except json.JSONDecodeError as error:
                problem = f"not valid JSON ({error.msg})"
            if problem is None:
                records.append(record)
            elif bad_lines == "skip":
                skipped.append({"line": number, "text": line.rstrip("\n"), "reason": problem})
            else:
                raise DataError(
                    f"{path}, line {number}: {problem}. Fix or remove that line, or set BAD_LINES='skip' to list and skip such lines."
                )
    return pd.DataFrame.from_records(records)


def load_table(path: str | Path, bad_lines: str = "error", skipped: list[dict] | None = None) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file; JSONL lines that are not JSON objects stop the load or, with
    ``bad_lines='skip'``, are appended to ``skipped`` with their line number and text."""
    path = Path(path)
    if bad_lines not in BAD_LINE_POLICIES:
        raise DataError(f"BAD_LINES must be one of {', '.join(BAD_LINE_POLICIES)}, got '{bad_lines}'.")
    if not path.is_file():
        raise DataError(
            f"data file not found: {path}. Check data.path in the job card (relative paths start at the card's folder)."
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        elif suffix in (".jsonl", ".ndjson"):
            frame = _read_jsonl(path, bad_lines, skipped if skipped is not None else [])
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: unsupported file type '{suffix}'. Use .csv, .jsonl or .parquet.")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text (byte {error.start} cannot be decoded). Re-save the file as UTF-8."
        ) from None
    except PermissionError:
        raise DataError(f"{path}: cannot be read (permission denied). Check the file's permissions.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no header, no rows).") from None
    except pd.errors.ParserError as error:
        raise DataError(
            f"{path}: cannot be parsed as CSV: {error}. Check quoting and the number of fields on that line."
        ) from None
    return frame.apply(lambda column: column.map(_cell))


def _cell(value: object) -> object:
    """Structured targets (JSON objects in JSONL/Parquet) stay objects; missing values become ''; the rest text."""
    if isinstance(value, (dict, list)):
        return value
    return "" if value is None or value != value else str(value)


def to_examples(
    frame: pd.DataFrame, card: JobCard, source: str, id_prefix: str = "row-"
) -> tuple[pd.DataFrame, list[dict]]:
    """Map the card's columns onto (row, id, text, target, tags); return them and the rows whose target breaks the card.

    A classification label outside the card's label set stops here with the rows named; a structured target that
    is not valid JSON or breaks the schema, the tool catalogue or the drafting rules is reported for the cleaning
    step to drop and list. Without an id column, rows are named ``<id_prefix><row number>``.
    """
    spec = card.data
    columns = list(frame.columns)
    target_role = "label_column" if card.task_kind == "classification" else "target_column"
    for role, column in (("text_column", spec.text_column), (target_role, card.target_column)):
        if column not in columns:
            raise DataError(
                f"{source}: no column '{column}' (data.{role} in the job card){closest(column, columns)}. "
                f"Columns in the file: {columns}."
            )
    # id and tags are optional: a file without them is fine. A near miss among the columns no other role uses is
    # probably a typo in the card and is refused; the text or target column is never a near miss.
    unused = [c for c in columns if c not in (spec.text_column, card.target_column, spec.id_column, spec.tags_column)]
    for role, column in (("id_column", spec.id_column), ("tags_column", spec.tags_column)):
        hint = closest(column, unused) if column is not None and column not in columns and len(frame) else ""
        if hint:
            raise DataError(
                f"{source}: no column '{column}' (data.{role} in the job card){hint}. "
                f"Columns in the file: {columns}. Fix the name in the card or the file, or set data.{role}: null."
            )
    if len(frame) == 0:
        raise DataError(f"{source}: the file has a header but no rows. Add labelled examples.")
    rows = pd.RangeIndex(1, len(frame) + 1)
    texts = frame[spec.text_column].astype(str).tolist()
    checked = [target_problems(card, raw, text) for raw, text in zip(frame[card.target_column].tolist(), texts)]
    examples = pd.DataFrame(
        {
            "row": rows,
            "id": frame[spec.id_column].astype(str).values
            if spec.id_column in columns
            else [f"{id_prefix}{r}" for r in rows],
            "text": texts,
            "target": [target for target, _ in checked],
            "tags": frame[spec.tags_column].astype(str).values if spec.tags_column in columns else "",
        }
    )
    repeated = examples["id"][examples["id"].duplicated()].unique().tolist()
    if repeated:
        raise DataError(
            f"{source}: ids must be unique (review decisions refer to them); repeated: {repeated[:10]}. "
            "Fix the id column, or set data.id_column: null in the card to number the rows instead."
        )
    if card.task_kind == "classification":
        allowed = set(card.label_names)
        bad = examples[(examples["target"] != "") & ~examples["target"].isin(allowed)]
        if len(bad):
            listed = "; ".join(
                f"row {r.row} (id {r.id}): '{r.target}'{closest(r.target, allowed)}" for r in bad.head(10).itertuples()
            )
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise DataError(
                f"{source}: {len(bad)} label(s) outside the job card's label set {sorted(allowed)}: {listed}{more}. "
                "Fix the data or add the label to the card."
            )
    invalid = [
        {"row": int(row), "id": str(ident), "problems": problems}
        for row, ident, (_, problems) in zip(examples["row"], examples["id"], checked)
        if problems
    ]
    return examples, invalid


def load_examples(
    card: JobCard, bad_lines: str = "error", skipped: list[dict] | None = None
) -> tuple[pd.DataFrame, list[dict]]:
    """Load the card's data file and check every target against the card."""
    return to_examples(load_table(card.data.path, bad_lines, skipped), card, card.data.path)


def load_frozen_test(
    path: str | Path,
    card: JobCard,
    examples: pd.DataFrame,
    bad_lines: str = "error",
    skipped: list[dict] | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Load a user-supplied test set (TEST_FILE) like the card's data; its ids must not name a row of ``examples``.

    Rows without an id column are named ``test-row-<n>``, so they cannot collide with the training file's ``row-<n>``.
    """
    frozen, invalid = to_examples(load_table(path, bad_lines, skipped), card, str(path), id_prefix="test-row-")
    shared = sorted(set(frozen["id"]) & set(examples["id"]))
    if shared:
        raise DataError(
            f"{path}: ids {shared[:10]}{' and more' if len(shared) > 10 else ''} also name rows of {card.data.path}; review "
            "decisions and reports refer to rows by id, so they must be unique across both files. Rename them in one file."
        )
    return frozen, invalid


def normalise(text: str) -> str:
    """Normal form used to find duplicates: NFKC, case-folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


DECISIONS = ("keep", "relabel", "drop")


def load_decisions(path: str | Path | None, card: JobCard | None = None) -> dict[str, dict]:
    """Read a review-decisions file (YAML list of {id, action: keep | relabel | drop, target?, note?}) keyed by id."""
    if not path:
        return {}
    path = Path(path)
    if not path.is_file():
        raise DataError(f"decisions file not found: {path} (DECISIONS_FILE). Leave it empty to apply the policy only.")
    import yaml

    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    decisions = {}
    for number, entry in enumerate(entries, start=1):
        where = f"{path}, decision {number}"
        if not isinstance(entry, dict) or "id" not in entry or entry.get("action") not in DECISIONS:
            raise DataError(f"{where}: expected {{id: ..., action: keep | relabel | drop}}, got {entry!r}.")
        if entry["action"] == "relabel":
            if "target" not in entry:
                raise DataError(f"{where}: a relabel decision needs the new target.")
            if card is not None and card.task_kind == "classification" and entry["target"] not in card.label_names:
                raise DataError(
                    f"{where}: '{entry['target']}' is not one of the labels {card.label_names}{closest(str(entry['target']), card.label_names)}."
                )
        decisions[str(entry["id"])] = entry
    return decisions


def save_decisions(decisions: dict[str, dict], path: str | Path) -> Path:
    """Write review decisions as YAML, in id order."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump([decisions[k] for k in sorted(decisions)], sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    return path


def apply_decisions(
    card: JobCard, examples: pd.DataFrame, decisions: dict[str, dict]
) -> tuple[pd.DataFrame, list[dict]]:
    """Apply relabel decisions (recording the old target) and set aside rows a reviewer dropped."""
    examples = examples.copy()
    report = []
    unknown = sorted(set(decisions) - set(examples["id"]))
    if unknown:
        raise DataError(f"review decisions name ids that are not in the data: {unknown[:10]}. Check DECISIONS_FILE.")
    for index, row in examples.iterrows():
        decision = decisions.get(row["id"])
        if decision is None:
            continue
        if decision["action"] == "relabel":
            new = decision["target"] if isinstance(decision["target"], str) else canonical(card, decision["target"])
            report.append(
                {
                    "row": int(row["row"]),
                    "id": row["id"],
                    "text": row["text"],
                    "target": row["target"],
                    "reason": f"review decision: relabelled to {new}",
                }
            )
            examples.at[index, "target"] = new
        elif decision["action"] == "drop":
            report.append(
                {
                    "row": int(row["row"]),
                    "id": row["id"],
                    "text": row["text"],
                    "target": row["target"],
                    "reason": f"review decision: drop{' (' + decision['note'] + ')' if decision.get('note') else ''}",
                }
            )
    dropped = {item["id"] for item in report if item["reason"].startswith("review decision: drop")}
    return examples[~examples["id"].isin(dropped)], report


def clean(
    examples: pd.DataFrame, invalid: list[dict] | None = None, keep: set[str] = frozenset()
) -> tuple[pd.DataFrame, list[dict]]:
    """Drop empty rows, invalid targets, exact duplicates and conflicting targets; return what is kept and a report of every drop.

    Ids in ``keep`` (a reviewer's keep decisions) are never dropped as conflicts.
    """
    report: list[dict] = []
    problems = {item["row"]: item["problems"] for item in invalid or []}

    def drop(row: pd.Series, reason: str) -> None:
        report.append(
            {"row": int(row["row"]), "id": row["id"], "text": row["text"], "target": row["target"], "reason": reason}
        )

    empty = (examples["text"].str.strip() == "") | (examples["target"] == "")
    for _, row in examples[empty].iterrows():
        drop(row, "empty text" if not row["text"].strip() else "empty target")
    bad = examples["row"].isin(problems) & ~empty
    for _, row in examples[bad].iterrows():
        drop(row, "invalid target: " + "; ".join(problems[row["row"]]))
    kept = examples[~empty & ~bad].copy()
    kept["_key"] = kept["text"].map(normalise)

    conflicted = (kept.groupby("_key")["target"].transform("nunique") > 1) & ~kept["id"].isin(keep)
    for _, group in kept[conflicted].groupby("_key", sort=False):
        rows = group["row"].tolist()
        for _, row in group.iterrows():
            drop(row, f"conflicting targets for the same text (rows {rows}); needs review")
    kept = kept[~conflicted]

    first = kept.groupby("_key")["row"].transform("min")
    duplicate = kept["row"] != first
    for (_, row), original in zip(kept[duplicate].iterrows(), first[duplicate]):
        drop(row, f"duplicate of row {int(original)}")
    kept = kept[~duplicate].drop(columns="_key")
    report.sort(key=lambda item: item["row"])
    return kept.reset_index(drop=True), report


def stratum(card: JobCard, target: str) -> str:
    """The group a target is stratified by: its label, its tool, or one group for free-form targets."""
    if card.task_kind == "classification":
        return target
    if card.task_kind == "tool_selection":
        return str(json.loads(target).get("tool"))
    return "all"


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


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of the example columns, in order."""
    digest = hashlib.sha256()
    for record in frame[COLUMNS].to_dict(orient="records"):
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


def dataset_version(
    splits: dict[str, pd.DataFrame],
    source: str | Path,
    policy: dict,
    counts_before: int,
    test_source: str | Path | None = None,
) -> dict:
    """Describe the dataset version: per-split hashes, source hash, policy and counts.

    ``rows_before`` and ``rows_after`` count the card's data file; a frozen test set (``test_source``) is counted
    on its own, since none of its rows came from that file.
    """
    split_hashes = {name: frame_hash(frame) for name, frame in splits.items()}
    combined = hashlib.sha256(json.dumps(split_hashes, sort_keys=True).encode()).hexdigest()
    from_source = [name for name in splits if not (test_source and name == "test")]
    version = {
        "hash": combined,
        "splits": {name: {"hash": split_hashes[name], "rows": len(frame)} for name, frame in splits.items()},
        "source": {"path": str(source), "sha256": file_hash(source)},
        "policy": policy,
        "rows_before": counts_before,
        "rows_after": sum(len(splits[name]) for name in from_source),
    }
    if test_source:
        version["test_source"] = {
            "path": str(test_source),
            "sha256": file_hash(test_source),
            "rows": len(splits["test"]),
        }
    return version


def save_splits(splits: dict[str, pd.DataFrame], folder: str | Path) -> Path:
    """Write each split as JSONL (with its source row numbers) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame[["row", *COLUMNS]].to_json(folder / f"{name}.jsonl", orient="records", lines=True, force_ascii=False)
    return folder


def load_splits(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Read the train/val/test JSONL files written by ``save_splits``."""
    folder = Path(folder)
    splits = {}
    for name in SPLITS:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"missing split {path}: run 01_clean_the_data for this run folder first.")
        splits[name] = pd.read_json(
            path, orient="records", lines=True, dtype={"id": str, "text": str, "target": str, "tags": str}
        )
        splits[name]["tags"] = splits[name]["tags"].fillna("").astype(str)
    return splits


def save_dataset(folder: str | Path, splits: dict[str, pd.DataFrame], version: dict, report: list[dict]) -> Path:
    """Write the splits, the dataset version and the cleaning report into ``folder``."""
    folder = save_splits(splits, folder)
    (folder / "dataset_version.json").write_text(json.dumps(version, indent=2))
    (folder / "cleaning_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return folder


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
