"""05_release's work as one function: the system 04 evaluated, checked as served, gated against the champion (or
the best baseline), registered with its model card and promoted if the gate passes; ``tunebook release`` calls it."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.clean import step as cleaning
from tunebook.core import tables
from tunebook.core.artifacts import (
    Comparison,
    DatasetVersion,
    Gate,
    Latency,
    Manifest,
    Parity,
    Registered,
    ReleaseComparison,
    ReleaseResults,
    Scores,
    System,
)
from tunebook.core.runfolder import STEPS, RunFolder, Step
from tunebook.errors import TunebookError
from tunebook.evaluate import step as evaluation
from tunebook.knowledge import check_fits, read_knowledge
from tunebook.knowledge.context import build_index
from tunebook.knowledge.passages import load_knowledge, save_knowledge
from tunebook.modeling import models
from tunebook.modeling.system import load_system
from tunebook.registry import store as registry
from tunebook.release import gate, publish
from tunebook.release import serving_checks as release
from tunebook.release.settings import ReleaseSettings


@dataclass
class Candidate:
    """What 05 releases, read from a run folder after 04: the card, the test split, the scores, the system, and the
    registry it goes into."""

    run: RunFolder
    settings: ReleaseSettings
    card: JobCard
    test: pd.DataFrame
    dataset: DatasetVersion
    baseline: Scores
    tuned: Scores
    comparison: Comparison
    system: System
    manifest: Manifest | None
    base_model: str  # resolved, or "" for a system without a language model
    against: ReleaseComparison  # the released system against the best baseline, and the card's targets
    store: registry.Registry
    identity: dict[str, str | None]  # what makes this release the same as a registered one (publish.release_identity)


@dataclass
class Reference:
    """What the candidate is gated against: the champion's test predictions, or the best baseline's before the first
    release."""

    predictions: pd.DataFrame
    name: str
    champion_version: str | None


def read_candidate(run: RunFolder, settings: ReleaseSettings) -> Candidate:
    """Everything 05 judges the run's system by, read from the run folder, and the registry opened (a system already
    released is refused here, before any check runs)."""
    card, system = run.read_job_card(), run.read_system()
    store = registry.open_registry(settings.tracking_uri, workspace=run.root.parent)
    identity = publish.refuse_released(store, card, run, system)
    baseline, tuned = run.read_scores(run.baseline_scores("best")), run.read_scores(run.tuned_scores)
    return Candidate(
        run=run,
        settings=settings,
        card=card,
        test=run.read_splits()["test"],
        dataset=run.read_dataset_version(),
        baseline=baseline,
        tuned=tuned,
        comparison=run.read_comparison(),
        system=system,
        manifest=publish.trained_manifest(run),
        base_model=models.resolve_base_model(settings.base_model) if system.needs_language_model else "",
        against=gate.compare(card, baseline, tuned, "tuned" if system.trained else system.variant),
        store=store,
        identity=identity,
    )


def reference(candidate: Candidate) -> Reference:
    """The champion's predictions on this test split (re-answered if the split changed), or the best baseline's."""
    c = candidate
    return Reference(
        *gate.reference_predictions(c.store, c.card, c.run, c.test, c.base_model, c.settings.eval_batch_size)
    )


def check_serving(candidate: Candidate) -> tuple[Parity, Latency]:
    """Parity of the served form with what 04 evaluated, and latency one request at a time."""
    c, s = candidate, candidate.settings
    return release.serving_checks(c.run, c.base_model, s.parity_examples, s.latency_examples, s.eval_batch_size)


def gate_candidate(candidate: Candidate, against: Reference, parity: Parity) -> Gate:
    """Every check that decides promotion, against ``against``, with the step's thresholds."""
    c, s = candidate, candidate.settings
    return gate.gate(
        c.card,
        c.run.read_predictions(c.run.tuned_predictions),
        against.predictions,
        against.name,
        regression=c.comparison.regression_probe,
        parity_result=parity,
        tolerance=s.tolerance,
        alpha=s.alpha,
        regression_max_increase=s.regression_max_increase,
        parity_min_agreement=s.parity_min_agreement,
        require_targets=s.require_targets,
        champion_version=against.champion_version,
        trained=c.system.trained,
        must_improve=gate.must_improve(c.store, c.card, c.run, c.system.trained),
    )


def register(
    candidate: Candidate, verdict: Gate, parity: Parity, speed: Latency
) -> tuple[publish.Evidence, Registered]:
    """The system registered as a new version with its evidence and model card, promoted if the gate passed."""
    c = candidate
    evidence = publish.Evidence(
        c.run, c.manifest, c.dataset, c.baseline, c.tuned, c.comparison, verdict, parity, speed, c.system, c.identity
    )
    return evidence, publish.publish_run(c.store, c.card, evidence, c.settings.promote, c.settings.base_model)


def record(candidate: Candidate, evidence: publish.Evidence, registered: Registered) -> ReleaseResults:
    """The release record with its lineage, and 05's results, written to the run folder."""
    c = candidate
    publish.record(c.run, c.against, publish.lineage(c.run, c.card, c.dataset, c.manifest))
    results = publish.recorded_results(c.against, evidence, registered)
    c.run.write_results(Step.RELEASE, results)
    return results


def release_run_folder(run_dir: str | Path, parameters: dict) -> ReleaseResults:
    """All of 05_release without the notebook: the same stages the notebook calls, one after the other."""
    candidate = read_candidate(RunFolder(Path(run_dir)), ReleaseSettings.from_parameters(parameters))
    against = reference(candidate)
    parity, speed = check_serving(candidate)
    verdict = gate_candidate(candidate, against, parity)
    evidence, registered = register(candidate, verdict, parity, speed)
    return record(candidate, evidence, registered)


def knowledge_update(
    run_dir: str | Path, documents: str | Path, into: str | Path, base_model: str = "bundled"
) -> RunFolder:
    """A new run folder ``into`` holding the released run's system (nothing retrained) answering from
    ``documents``: their passages checked and indexed by the same retriever with the same k. When the documents
    are the job's later version (knowledge.fresh_documents), the test questions are judged on their later facts (a
    question whose article was removed now expects the hand-over); otherwise on the facts as written, and the
    system's description says so."""
    # deferred: the retrievers' libraries load only for a knowledge update

    source, target = RunFolder(Path(run_dir)), RunFolder(Path(into))
    card = source.read_job_card()
    if card.knowledge is None or not source.knowledge_index.is_dir():
        raise TunebookError(
            f"{source.root}: this job answers without documents (no knowledge section): nothing to update."
        )
    if target.root.exists():
        raise TunebookError(f"{target.root} exists; a knowledge update is written to a new run folder.")
    index_meta = source.read_system().knowledge or source.read_system(source.variant_system("rag")).knowledge
    previous = load_knowledge(source.knowledge_dir)
    # the prompt length the system was trained with, else the one 01 checked the released passages against
    trained = source.trained_weights() is not None
    max_length = source.read_manifest().config["max_length"] if trained else previous.max_length
    tokenizer = models.load_tokenizer(models.resolve_base_model(base_model))
    knowledge = check_fits(
        read_knowledge(documents, card.knowledge.passage_words), tokenizer, max_length or 2048, index_meta["k"]
    )
    if knowledge.version == previous.version:
        raise TunebookError(f"{documents} holds the same passages (knowledge {previous.version[:12]}) as the release.")
    target.root.mkdir(parents=True)
    # what the system is made of and was measured on; not 04's evaluation, 05's release or the executed notebooks
    for found in (
        source.adapter_dir,
        source.blind_adapter_dir,
        source.baseline_dir,
        source.data_dir,
        source.approach_file,
    ):
        placed = target.root / source.relative(found)
        if found.is_dir():
            shutil.copytree(found, placed, ignore=shutil.ignore_patterns("checkpoint*"))
        elif found.is_file():
            shutil.copy2(found, placed)
    for step in STEPS[:3]:
        if source.results_file(step).is_file():
            target.results_file(step).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source.results_file(step), target.results_file(step))
    shutil.rmtree(target.knowledge_dir)
    save_knowledge(knowledge, target.knowledge_dir)
    shutil.rmtree(target.knowledge_index)
    index = build_index(knowledge, index_meta["retriever"], index_meta["k"]).save(target.knowledge_index)
    shutil.copytree(source.system_dir, target.system_dir)  # the released system, answering from the new index
    shutil.rmtree(target.system_knowledge)
    shutil.copytree(index, target.system_knowledge)
    spec = target.read_system()
    target.write_system(spec.model_copy(update={"knowledge": {**spec.knowledge, "version": knowledge.version}}))
    for variant in target.read_variants().variants:
        path = target.variant_system(variant)
        spec = target.read_system(path) if path.is_file() else None
        if spec is not None and spec.knowledge:
            target.write_system(
                spec.model_copy(update={"knowledge": {**spec.knowledge, "version": knowledge.version}}), path
            )
    fresh = source.read_dataset_version().fresh_knowledge
    later_facts = fresh is not None and fresh.version == knowledge.version
    splits = target.read_splits()
    if later_facts:
        test = splits["test"].copy()
        removed = [bool(old) and not new for old, new in zip(test["facts"], test["fresh_facts"])]
        test["sources"] = [[] if gone else s for s, gone in zip(test["sources"], removed)]
        test["facts"] = test["fresh_facts"]
        splits["test"] = test
    version = target.read_dataset_version()
    split_hashes = {name: tables.frame_hash(frame) for name, frame in splits.items()}
    version = version.model_copy(
        update={
            "hash": tables.combined_hash(split_hashes),
            "splits": {
                name: part.model_copy(update={"hash": split_hashes[name]}) for name, part in version.splits.items()
            },
            "knowledge": cleaning.knowledge_record(knowledge),
            "fresh_knowledge": None,
            "previous_knowledge": version.knowledge,
        }
    )
    target.write_dataset(splits, version, json.loads(source.cleaning_report.read_text(encoding="utf-8")))
    # the release now answers from these documents: 06 checks that they stay as released
    card.knowledge.documents, card.knowledge.fresh_documents = str(Path(documents).resolve()), None
    target.write_job_card(card)
    note = (
        f"knowledge update from {previous.version[:12]} to {knowledge.version[:12]} ({documents}), nothing retrained; "
        + (
            "judged on the test questions' facts under the new documents"
            if later_facts
            else "the test questions' facts are as written for the earlier documents: check the figures that depend on them"
        )
    )
    target.knowledge_update.write_text(
        json.dumps(
            {"from": previous.version, "to": knowledge.version, "documents": str(documents), "note": note}, indent=2
        )
        + "\n",
        encoding="utf-8",
    )
    return target


def release_knowledge(
    run_dir: str | Path, documents: str | Path, into: str | Path, parameters: dict
) -> ReleaseResults:
    """A new knowledge version as a release: the released run's system answering from ``documents`` (nothing
    retrained), evaluated on the test questions, gated against the champion and registered (``knowledge_update``)."""

    base_model = parameters.get("BASE_MODEL", "bundled")
    target = knowledge_update(run_dir, documents, into, base_model)
    settings = evaluation.EvaluateSettings(base_model=base_model, train_sample=0)
    trained = target.read_system().trained
    store = registry.open_registry(
        ReleaseSettings.from_parameters(parameters).tracking_uri, workspace=target.root.parent
    )
    publish.refuse_released(store, target.read_job_card(), target, target.read_system())  # before the costly part
    candidate = evaluation.load_tuned(target, base_model) if trained else load_system(target, base_model)
    result = evaluation.evaluate_run(target, candidate, settings)
    evaluation.save_evaluation(target, result)
    return release_run_folder(target.root, parameters)
