"""Loading, validating, cleaning, splitting and versioning the examples."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pandas as pd
import yaml

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core.tables import CONTEXT_COLUMNS, example_columns
from tunebook.errors import DataError, closest

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


def _check_columns(frame: pd.DataFrame, card: JobCard, source: str) -> None:
    """Refuse a file without the card's text or target column, or with a near miss of its id or tags column."""
    spec, columns = card.data, list(frame.columns)
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


def to_examples(
    frame: pd.DataFrame, card: JobCard, source: str, id_prefix: str = "row-"
) -> tuple[pd.DataFrame, list[dict]]:
    """Map the card's columns onto (row, id, text, target, tags); return them and the rows whose target breaks the card.

    A classification label outside the card's label set stops here with the rows named; a structured target that
    is not valid JSON or breaks the schema, the tool catalogue or the drafting rules is reported for the cleaning
    step to drop and list. Without an id column, rows are named ``<id_prefix><row number>``.
    """
    spec, columns = card.data, list(frame.columns)
    _check_columns(frame, card, source)
    if len(frame) == 0:
        raise DataError(f"{source}: the file has a header but no rows. Add labelled examples.")
    rows = pd.RangeIndex(1, len(frame) + 1)
    texts = frame[spec.text_column].astype(str).tolist()
    kind = task_of(card)
    checked = [kind.parse_target(card, raw, text) for raw, text in zip(frame[card.target_column].tolist(), texts)]
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
    if card.knowledge is not None:
        for name, values in knowledge_columns(frame, card, source).items():
            examples[name] = values
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
    return load_second_file(path, card, examples, "test-row-", bad_lines, skipped)


def load_second_file(
    path: str | Path,
    card: JobCard,
    examples: pd.DataFrame,
    id_prefix: str,
    bad_lines: str = "error",
    skipped: list[dict] | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Load another file in the card's format (a frozen test set, labelled traffic) whose ids must not name a row
    of ``examples``; rows without an id are named ``<id_prefix><n>``."""
    frozen, invalid = to_examples(load_table(path, bad_lines, skipped), card, str(path), id_prefix=id_prefix)
    shared = sorted(set(frozen["id"]) & set(examples["id"]))
    if shared:
        raise DataError(
            f"{path}: ids {shared[:10]}{' and more' if len(shared) > 10 else ''} also name rows of {card.data.path}; review "
            "decisions and reports refer to rows by id, so they must be unique across both files. Rename them in one file."
        )
    return frozen, invalid


def answer_frame(examples: pd.DataFrame) -> pd.DataFrame:
    """A fresh frame for answers to ``examples``: their example columns and any retrieved context, in row order."""
    carried = example_columns(examples) + [c for c in CONTEXT_COLUMNS if c in examples]
    return examples[carried].reset_index(drop=True).copy()


def _text_list(value: object, where: str, what: str, comma_separated: bool) -> list[str]:
    """A list of strings from a cell: a list, a JSON list, a comma-separated string (sources) or empty."""
    if isinstance(value, list):
        items = value
    elif not str(value).strip():
        items = []
    elif str(value).lstrip().startswith("["):
        try:
            items = json.loads(str(value))
        except json.JSONDecodeError:
            raise DataError(f"{where}: {what} is not a JSON list ({str(value)[:60]!r}).") from None
    elif comma_separated:
        items = str(value).split(",")
    else:
        items = [value]
    if not all(isinstance(item, str) for item in items):
        raise DataError(f"{where}: {what} must be a list of strings, got {value!r}.")
    return [item.strip() for item in items if item.strip()]


def knowledge_columns(frame: pd.DataFrame, card: JobCard, source: str) -> dict[str, list[list[str]]]:
    """The knowledge columns of a knowledge job's file, as lists: the source column is required, the fact columns
    are read when the card names them and the file has them."""
    spec, columns = card.knowledge, list(frame.columns)
    if spec.source_column not in columns:
        raise DataError(
            f"{source}: no column '{spec.source_column}' (knowledge.source_column in the job card)"
            f"{closest(spec.source_column, columns)}: each example names the article id(s) its answer rests on "
            "('' when no article holds it), which is how retrieval is measured. Columns in the file: "
            f"{columns}."
        )
    wanted = {"sources": spec.source_column, "facts": spec.facts_column, "fresh_facts": spec.fresh_facts_column}
    found = {}
    for name, column in wanted.items():
        if column is None or column not in columns:
            continue
        found[name] = [
            _text_list(value, f"{source}, row {row} ({column})", column, comma_separated=name == "sources")
            for row, value in enumerate(frame[column].tolist(), start=1)
        ]
    return found


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
            new = (
                decision["target"]
                if isinstance(decision["target"], str)
                else task_of(card).canonical(card, decision["target"])
            )
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
