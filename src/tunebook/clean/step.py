"""01_clean_the_data's work in two halves around the human review: read and audit the examples, then clean, split
and version them (the dataset version, the splits, the data card and the step's results)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.clean import audit
from tunebook.clean.settings import CleanSettings
from tunebook.clean.traffic import traffic_difference
from tunebook.core import artifacts, tables
from tunebook.core.runfolder import RunFolder, Step
from tunebook.data import examples as data
from tunebook.data import splits as dataset
from tunebook.errors import DataError, TunebookError
from tunebook.knowledge import Knowledge, check_fits, read_knowledge
from tunebook.knowledge.passages import save_knowledge
from tunebook.modeling import models


@dataclass
class Audited:
    """The first half: what was read, what the policy and the review decisions removed, and the audit's findings."""

    card: JobCard
    examples: pd.DataFrame  # every row read, before cleaning
    invalid: list[dict]  # rows whose target breaks the card (held back, listed in removed)
    skipped: list  # unreadable lines (BAD_LINES='skip')
    decisions: dict
    frozen: tuple | None  # (frozen test rows, their problems) when TEST_FILE is given
    traffic_difference: (
        pd.DataFrame | None
    )  # the card's data against the labelled traffic, when LABELLED_TRAFFIC is given
    clean: pd.DataFrame
    removed: list
    keep: set
    found: audit.Audit
    knowledge: Knowledge | None = None  # the card's documents as passages (knowledge jobs)
    fresh_knowledge: Knowledge | None = None  # their later version, for the freshness test


def read_knowledge_of(card: JobCard, tokenizer, max_length: int) -> tuple[Knowledge | None, Knowledge | None]:
    """The card's documents (and their later version) as checked passages: ``k`` of the longest must fit half of
    ``max_length`` tokens, leaving the rest of the prompt and the answer room."""
    spec = card.knowledge
    if spec is None:
        return None, None
    read = [
        check_fits(read_knowledge(folder, spec.passage_words), tokenizer, max_length, spec.k) if folder else None
        for folder in (spec.documents, spec.fresh_documents)
    ]
    return read[0], read[1]


def check_sources(examples: pd.DataFrame, knowledge: Knowledge, source: str) -> None:
    """Stop when an example names a source article the documents do not have."""
    known = set(knowledge.articles)
    unknown = [
        (row.row, row.id, [a for a in row.sources if a not in known])
        for row in examples.itertuples()
        if any(a not in known for a in row.sources)
    ]
    if unknown:
        listed = "; ".join(f"row {r} (id {i}): {ids}" for r, i, ids in unknown[:10])
        raise DataError(
            f"{source}: {len(unknown)} example(s) name source articles that are not in {knowledge.folder}: {listed}. "
            "Fix the ids (an article's id is its front matter id or file name) or add the articles."
        )


def read_and_audit(run: RunFolder, settings: CleanSettings) -> Audited:
    """Read the card's data (and a frozen test file), apply the review decisions and the written policy, and audit
    what is left."""
    card = run.read_job_card()
    skipped: list = []
    examples, invalid = data.load_examples(card, bad_lines=settings.bad_lines, skipped=skipped)
    difference = None
    if settings.labelled_traffic:
        traffic, traffic_invalid = data.load_second_file(
            settings.labelled_traffic, card, examples, "traffic-row-", settings.bad_lines, skipped
        )
        difference = traffic_difference(card, examples, traffic)
        examples, invalid = pd.concat([examples, traffic], ignore_index=True), invalid + traffic_invalid
    decisions = data.load_decisions(settings.decisions_file, card)
    frozen = (
        data.load_frozen_test(settings.test_file, card, examples, settings.bad_lines, skipped)
        if settings.test_file
        else None
    )
    decided, decided_report = data.apply_decisions(card, examples, decisions)
    keep = {i for i, d in decisions.items() if d["action"] == "keep"}
    clean, removed = data.clean(decided, invalid, keep=keep)
    tokenizer = models.load_tokenizer(models.resolve_base_model(settings.base_model))
    knowledge, fresh = read_knowledge_of(card, tokenizer, settings.max_length)
    if knowledge is not None:
        check_sources(examples, knowledge, card.data.path)
    found = audit.run_audit(
        card,
        clean,
        settings.near_dup_threshold,
        settings.suspect_threshold,
        settings.min_per_label,
        tokenizer,
        settings.max_length,
    )
    return Audited(
        card,
        examples,
        invalid,
        skipped,
        decisions,
        frozen,
        difference,
        clean,
        decided_report + removed,
        keep,
        found,
        knowledge,
        fresh,
    )


@dataclass
class Cleaned:
    """The second half: the splits, their version, and what was removed on the way."""

    splits: dict[str, pd.DataFrame]
    version: artifacts.DatasetVersion
    removed: list[dict]  # every row removed, with the reason
    near_removed: list[dict]  # of which near duplicates dropped by the policy
    test_findings: list[dict]  # the frozen test file's problems, reported, never changed
    leaked: list[dict]  # training rows removed as near copies of frozen test rows
    cross_split: pd.DataFrame  # near duplicates across the splits
    review: list[dict]  # findings still waiting for a review decision
    data_card: Path


def split_and_version(run: RunFolder, audited: Audited, settings: CleanSettings) -> Cleaned:
    """Drop near duplicates by the policy, keep training rows away from a frozen test set, split without leaks, hash
    the splits into a dataset version, and write the splits, the data card and the step's results."""
    card, found = audited.card, audited.found
    clean, near_removed = audit.drop_near_duplicates(
        audited.clean, found.near_duplicates, settings.near_duplicates, keep=audited.keep
    )
    removed = audited.removed + near_removed
    test_findings, leaked = [], []
    if audited.frozen:
        test_findings = audit.check_frozen_test(*audited.frozen)
        clean, leaked = audit.remove_leaks(clean, audited.frozen[0], settings.near_dup_threshold)
        removed += leaked
    groups = audit.near_groups(clean, found)
    if audited.frozen:
        splits = dataset.split_with_frozen_test(
            clean, audited.frozen[0], card, val_fraction=settings.val_fraction, seed=settings.seed, groups=groups
        )
    else:
        splits = dataset.split(
            clean,
            card,
            test_fraction=settings.test_fraction,
            val_fraction=settings.val_fraction,
            seed=settings.seed,
            groups=groups,
        )
    cross_split = audit.cross_split_near_duplicates(splits, settings.near_dup_threshold)
    version = dataset.dataset_version(
        splits,
        card.data.path,
        cleaning_policy(settings, audited.decisions),
        counts_before=len(audited.examples),
        test_source=settings.test_file or None,
    )
    for knowledge, folder, field in (
        (audited.knowledge, run.knowledge_dir, "knowledge"),
        (audited.fresh_knowledge, run.fresh_knowledge_dir, "fresh_knowledge"),
    ):
        if knowledge is not None:
            save_knowledge(knowledge, folder)
            setattr(version, field, knowledge_record(knowledge))
    run.write_dataset(splits, version, removed)
    review = audit.needs_review(found, audited.decisions)
    data_card = audit.write_data_card(
        run.data_card, card, version, found, removed, audited.skipped, review, len(cross_split)
    )
    cleaned = Cleaned(splits, version, removed, near_removed, test_findings, leaked, cross_split, review, data_card)
    run.write_results(Step.CLEAN, recorded_results(audited, cleaned))
    return cleaned


def knowledge_record(knowledge: Knowledge) -> artifacts.KnowledgeVersion:
    """What the dataset version records of one version of the documents."""
    return artifacts.KnowledgeVersion(
        version=knowledge.version,
        folder=knowledge.folder,
        articles=len(knowledge.articles),
        passages=len(knowledge.passages),
        passage_words=knowledge.passage_words,
    )


def cleaning_policy(settings: CleanSettings, decisions: dict) -> dict:
    """The written cleaning policy recorded in the dataset version: every setting that decides which rows are kept."""
    return {
        "empty": "drop",
        "invalid_targets": "drop",
        "duplicates": "keep first",
        "conflicts": "drop all for review",
        "near_duplicates": settings.near_duplicates,
        "near_dup_threshold": settings.near_dup_threshold,
        "suspect_threshold": settings.suspect_threshold,
        "bad_lines": settings.bad_lines,
        "test_fraction": settings.test_fraction,
        "val_fraction": settings.val_fraction,
        "seed": settings.seed,
        "frozen_test": {"path": settings.test_file, "sha256": tables.file_hash(settings.test_file)}
        if settings.test_file
        else None,
        **(
            {"traffic": {"path": settings.labelled_traffic, "sha256": tables.file_hash(settings.labelled_traffic)}}
            if settings.labelled_traffic
            else {}
        ),
        "decisions": {k: decisions[k] for k in sorted(decisions)},
    }


def recorded_results(audited: Audited, cleaned: Cleaned) -> artifacts.CleanResults:
    """results/01_clean_the_data.json."""
    return artifacts.CleanResults(
        dataset_hash=cleaned.version.hash,
        rows_before=len(audited.examples),
        rows_after=cleaned.version.rows_after,
        removed=len(cleaned.removed),
        splits={name: len(frame) for name, frame in cleaned.splits.items()},
        skipped_lines=len(audited.skipped),
        needs_review=len(cleaned.review),
        cross_split_near_duplicates=len(cleaned.cross_split),
        audit=audited.found.summary,
    )


def clean_run_folder(run_dir: str | Path, parameters: dict) -> tuple[Audited, Cleaned]:
    """All of 01_clean_the_data without the notebook (review decisions come from DECISIONS_FILE): audit, split, save."""
    run, settings = RunFolder(Path(run_dir)), CleanSettings.from_parameters(parameters)
    if run.dataset_version.exists():
        raise TunebookError(
            f"{run.data_dir} already holds a dataset version; it is never overwritten. Use a new run folder (00 first)."
        )
    audited = read_and_audit(run, settings)
    return audited, split_and_version(run, audited, settings)
