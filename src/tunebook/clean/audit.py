"""The data audit: near duplicates, conflicts, balance, lengths, hard-case coverage and suspected label errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core.artifacts import DatasetVersion
from tunebook.data.examples import clean, normalise
from tunebook.data.neardup import groups_from_pairs, near_duplicate_pairs
from tunebook.data.splits import stratum
from tunebook.errors import DataError
from tunebook.modeling.prompts import render_text


def suspected_label_errors(
    card: JobCard, examples: pd.DataFrame, threshold: float = 0.6, folds: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Examples whose label a cross-validated TF-IDF + logistic-loss linear classifier confidently disputes."""
    # deferred: scikit-learn loads only for the label-error check
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    columns = ["row", "id", "text", "target", "suggested", "confidence"]
    if not task_of(card).scores_choices or len(examples) < 2 * folds:
        return pd.DataFrame(columns=columns)
    labels = examples["target"].map(lambda t: stratum(card, t)).to_numpy()
    counts = pd.Series(labels).value_counts()
    folds = int(min(folds, counts.min()))
    if folds < 2:
        return pd.DataFrame(columns=columns)
    # TF-IDF is unsupervised, so it is fitted once on all texts; only the classifier is cross-validated.
    # Logistic loss by SGD: the same model as LogisticRegression, several times faster on 100k examples.
    features = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(examples["text"].to_numpy())
    model = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=seed)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One BLAS thread: with competing BLAS threads the cross-validation thrashed (24 s instead of 0.4 s on 349 tickets).
    with threadpool_limits(limits=1):
        probs = cross_val_predict(model, features, labels, cv=cv, method="predict_proba")
    classes = np.array(sorted(set(labels)))
    best = probs.argmax(axis=1)
    frame = examples[["row", "id", "text", "target"]].copy()
    frame["suggested"], frame["confidence"] = classes[best], probs.max(axis=1).round(3)
    disputed = (frame["suggested"].to_numpy() != labels) & (frame["confidence"].to_numpy() >= threshold)
    return frame[disputed].reset_index(drop=True)[columns]


def balance(card: JobCard, examples: pd.DataFrame, min_count: int = 10) -> pd.DataFrame:
    """Examples, share, hard cases and hard-case share per label (or tool); flags labels that are too rare."""
    groups = examples["target"].map(lambda t: stratum(card, t))
    hard = examples["tags"].str.contains(r"\bhard\b", regex=True)
    table = pd.DataFrame({"examples": groups.value_counts()})
    for name in card.choices:
        if name not in table.index:
            table.loc[name] = 0
    table["share"] = (table["examples"] / max(1, len(examples))).round(3)
    table["hard"] = hard.groupby(groups).sum().reindex(table.index).fillna(0).astype(int)
    table["hard_share"] = (table["hard"] / table["examples"].clip(lower=1)).round(3)
    table["too_rare"] = table["examples"] < min_count
    return table.sort_values("examples", ascending=False)


def token_lengths(tokenizer, card: JobCard, examples: pd.DataFrame, max_length: int) -> pd.DataFrame:
    """Prompt and answer token counts per example, with what MAX_LENGTH would cut."""

    # The chat template around the input costs the same for every example (special tokens separate it from the
    # input, so tokenization does not merge across the boundary): count it once, then only the inputs.
    marker = "\u0000TUNEBOOK-INPUT\u0000"
    before, after = render_text(tokenizer, card, marker).split(marker)
    fixed = len(tokenizer(before, add_special_tokens=False)["input_ids"]) + len(
        tokenizer(after, add_special_tokens=False)["input_ids"]
    )
    texts = [text.strip() for text in examples["text"]]
    prompt = [fixed + len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    answer = [
        len(ids) + 1 for ids in tokenizer(list(examples["target"]), add_special_tokens=False)["input_ids"]
    ]  # + end of turn
    frame = examples[["row", "id"]].copy()
    frame["prompt_tokens"], frame["answer_tokens"] = prompt, answer
    frame["total_tokens"] = frame["prompt_tokens"] + frame["answer_tokens"]
    # Training keeps the whole prompt and cuts the answer's end; a prompt that does not fit leaves nothing to learn.
    frame["prompt_cut"] = frame["prompt_tokens"] >= max_length
    frame["answer_cut"] = (frame["total_tokens"] > max_length) & ~frame["prompt_cut"]
    return frame


@dataclass
class Audit:
    """Everything the audit found, each finding with row numbers and the original text."""

    near_duplicates: pd.DataFrame
    near_conflicts: pd.DataFrame
    suspected_errors: pd.DataFrame
    balance: pd.DataFrame
    lengths: pd.DataFrame | None = None
    summary: dict = field(default_factory=dict)


def near_findings(examples: pd.DataFrame, threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Near-duplicate pairs with the same target, and near-same texts with different targets."""
    pairs = near_duplicate_pairs(examples["text"].tolist(), threshold)
    a = examples.iloc[pairs["i"].to_numpy(dtype=int)][["row", "id", "text", "target"]].reset_index(drop=True)
    b = examples.iloc[pairs["j"].to_numpy(dtype=int)][["row", "id", "text", "target"]].reset_index(drop=True)
    frame = pd.concat([a.add_suffix("_a"), b.add_suffix("_b")], axis=1)
    frame["similarity"] = pairs["similarity"].round(3).to_numpy()
    same = frame["target_a"] == frame["target_b"]
    return frame[same].reset_index(drop=True), frame[~same].reset_index(drop=True)


def run_audit(
    card: JobCard,
    examples: pd.DataFrame,
    near_threshold: float = 0.8,
    suspect_threshold: float = 0.6,
    min_count: int = 10,
    tokenizer=None,
    max_length: int = 512,
) -> Audit:
    """Audit clean candidate examples (after empty rows, invalid targets and exact duplicates are set aside)."""
    near, conflicts = near_findings(examples, near_threshold)
    suspects = suspected_label_errors(card, examples, suspect_threshold)
    table = balance(card, examples, min_count)
    lengths = token_lengths(tokenizer, card, examples, max_length) if tokenizer is not None else None
    summary = {
        "examples": len(examples),
        "near_duplicate_pairs": len(near),
        "near_conflict_pairs": len(conflicts),
        "suspected_label_errors": len(suspects),
        "too_rare": sorted(table.index[table["too_rare"]].tolist()),
        "hard_share": round(float(examples["tags"].str.contains(r"\bhard\b", regex=True).mean()), 3)
        if len(examples)
        else 0.0,
    }
    if lengths is not None:
        summary.update(
            prompt_cut=int(lengths["prompt_cut"].sum()),
            answer_cut=int(lengths["answer_cut"].sum()),
            max_total_tokens=int(lengths["total_tokens"].max()),
        )
    return Audit(near, conflicts, suspects, table, lengths, summary)


def drop_near_duplicates(
    examples: pd.DataFrame, pairs: pd.DataFrame, policy: str, keep: set[str] = frozenset()
) -> tuple[pd.DataFrame, list[dict]]:
    """Drop the later row of each same-target near-duplicate pair (policy 'drop'), listing each; 'keep' changes nothing."""
    if policy not in ("drop", "keep"):
        raise DataError(f"NEAR_DUPLICATES must be 'drop' or 'keep', got '{policy}'.")
    if policy == "keep" or pairs.empty:
        return examples, []
    drop: dict[str, str] = {}
    for pair in pairs.itertuples():
        if pair.id_b not in keep and pair.id_a not in drop:
            drop.setdefault(pair.id_b, f"near duplicate of row {pair.row_a} (similarity {pair.similarity})")
    removed = [
        {"row": int(r.row), "id": r.id, "text": r.text, "target": r.target, "reason": drop[r.id]}
        for r in examples[examples["id"].isin(drop)].itertuples()
    ]
    return examples[~examples["id"].isin(drop)].reset_index(drop=True), removed


def near_groups(examples: pd.DataFrame, found: Audit) -> np.ndarray:
    """Group id per row such that texts the audit found near-duplicate share a group (rows dropped since are ignored)."""
    position = {ident: i for i, ident in enumerate(examples["id"])}
    pairs = pd.concat([found.near_duplicates, found.near_conflicts])
    kept = pairs[pairs["id_a"].isin(position) & pairs["id_b"].isin(position)]
    indexed = pd.DataFrame({"i": kept["id_a"].map(position), "j": kept["id_b"].map(position)})
    return groups_from_pairs(len(examples), indexed)


def cross_split_near_duplicates(splits: dict[str, pd.DataFrame], threshold: float) -> pd.DataFrame:
    """Near-duplicate pairs whose two texts sit in different splits (a leak; should be empty)."""
    frame = pd.concat([f.assign(split=name) for name, f in splits.items()], ignore_index=True)
    pairs = near_duplicate_pairs(frame["text"].tolist(), threshold)
    split_of = frame["split"].to_numpy()
    leaks = (
        pairs[split_of[pairs["i"].to_numpy(dtype=int)] != split_of[pairs["j"].to_numpy(dtype=int)]]
        if len(pairs)
        else pairs
    )
    return pd.DataFrame(
        {
            "id_a": frame["id"].to_numpy()[leaks["i"].to_numpy(dtype=int)],
            "split_a": split_of[leaks["i"].to_numpy(dtype=int)],
            "id_b": frame["id"].to_numpy()[leaks["j"].to_numpy(dtype=int)],
            "split_b": split_of[leaks["j"].to_numpy(dtype=int)],
            "similarity": leaks["similarity"].to_numpy(),
        }
    )


def review_items(found: Audit) -> list[dict]:
    """Every finding a person should look at, one item per example, in review order."""
    items = []
    for pair in found.near_conflicts.itertuples():
        for side in ("a", "b"):
            other = "b" if side == "a" else "a"
            items.append(
                {
                    "kind": "near conflict",
                    "id": getattr(pair, f"id_{side}"),
                    "row": int(getattr(pair, f"row_{side}")),
                    "text": getattr(pair, f"text_{side}"),
                    "target": getattr(pair, f"target_{side}"),
                    "context": f"similar ({pair.similarity}) to row {getattr(pair, f'row_{other}')} labelled {getattr(pair, f'target_{other}')!r}: "
                    f"{getattr(pair, f'text_{other}')}",
                }
            )
    for suspect in found.suspected_errors.itertuples():
        items.append(
            {
                "kind": "suspected label error",
                "id": suspect.id,
                "row": int(suspect.row),
                "text": suspect.text,
                "target": suspect.target,
                "context": f"a classifier says {suspect.suggested!r} with confidence {suspect.confidence}",
            }
        )
    for pair in found.near_duplicates.itertuples():
        items.append(
            {
                "kind": "near duplicate",
                "id": pair.id_b,
                "row": int(pair.row_b),
                "text": pair.text_b,
                "target": pair.target_b,
                "context": f"similar ({pair.similarity}) to row {pair.row_a}: {pair.text_a}",
            }
        )
    return items


def needs_review(found: Audit, decisions: dict[str, dict]) -> list[dict]:
    """Near conflicts and suspected label errors that no review decision covers yet."""
    return [item for item in review_items(found) if item["kind"] != "near duplicate" and item["id"] not in decisions]


def _table(rows: list[dict], columns: list[str], limit: int = 50) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        lines.append(
            "| " + " | ".join(str(row.get(c, "")).replace("|", "\\|").replace("\n", " ")[:120] for c in columns) + " |"
        )
    if len(rows) > limit:
        lines.append(f"\n... and {len(rows) - limit} more (see cleaning_report.json)")
    return "\n".join(lines) + "\n"


def write_data_card(
    path: str | Path,
    card: JobCard,
    version: DatasetVersion,
    found: Audit,
    removed: list[dict],
    skipped: list[dict],
    review: list[dict],
    leaks: int,
) -> Path:
    """Write the data card (markdown): version, counts, policy, findings, what was removed and what still needs review."""
    test_source = version.test_source
    splits = ", ".join(
        f"{name} {info.rows}" for name, info in version.splits.items() if not (test_source and name == "test")
    )
    frozen = f"; frozen test set: {test_source.rows} rows from `{test_source.path}`, unchanged" if test_source else ""
    balance_rows = [{"label": name, **row} for name, row in found.balance.to_dict(orient="index").items()]
    text = f"""# Data card: {card.name}

- task kind: {card.task_kind}
- source: `{version.source.path}` (sha256 `{version.source.sha256[:16]}`)
- dataset version: `{version.hash}`
- rows: {version.rows_before} read, {version.rows_after} kept ({splits}){frozen}
- policy: {", ".join(f"{k}={v}" for k, v in version.policy.items() if k != "decisions")}
- review decisions applied: {len(version.policy.get("decisions", {}))}
- near duplicates across splits after splitting: {leaks}

## Audit summary

{_table([found.summary], list(found.summary))}
## Balance and hard-case coverage

{_table(balance_rows, ["label", "examples", "share", "hard", "hard_share", "too_rare"])}
## Removed, with reasons

{_table(removed, ["row", "id", "reason", "text"])}
## Unreadable lines skipped

{_table(skipped, ["line", "reason", "text"])}
## Still needs review

{_table(review, ["kind", "row", "id", "target", "context"])}
"""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def leaks_into(frozen: pd.DataFrame, examples: pd.DataFrame, threshold: float) -> dict[str, str]:
    """Ids of ``examples`` that repeat or nearly repeat a text of the frozen test set, with the reason."""
    texts = frozen["text"].tolist() + examples["text"].tolist()
    pairs = near_duplicate_pairs(texts, threshold)
    n = len(frozen)
    leaks: dict[str, str] = {}
    frozen_keys = {normalise(t): r for t, r in zip(frozen["text"], frozen["row"])}
    for ident, text in zip(examples["id"], examples["text"]):
        if normalise(text) in frozen_keys:
            leaks[ident] = f"repeats test-set row {frozen_keys[normalise(text)]}"
    for i, j, similarity in pairs.itertuples(index=False):
        i, j = int(i), int(j)
        if i < n <= j:
            leaks.setdefault(
                examples["id"].iloc[j - n],
                f"near duplicate ({similarity:.2f}) of test-set row {frozen['row'].iloc[i]}",
            )
    return leaks


def check_frozen_test(frozen: pd.DataFrame, invalid: list[dict]) -> list[dict]:
    """What cleaning would remove from a user-supplied test set; reported only, the set stays as given."""

    _, findings = clean(frozen, invalid)
    return [{**item, "reason": item["reason"] + " (kept: the test set is frozen)"} for item in findings]


def remove_leaks(examples: pd.DataFrame, frozen: pd.DataFrame, threshold: float) -> tuple[pd.DataFrame, list[dict]]:
    """Drop training candidates that repeat or nearly repeat a frozen test text, listing each."""
    leaks = leaks_into(frozen, examples, threshold)
    removed = [
        {"row": int(r.row), "id": r.id, "text": r.text, "target": r.target, "reason": leaks[r.id]}
        for r in examples[examples["id"].isin(leaks)].itertuples()
    ]
    return examples[~examples["id"].isin(leaks)].reset_index(drop=True), removed
