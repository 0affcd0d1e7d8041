"""02_prove_the_baseline's work: every cheap alternative answers validation and test, the best on validation is the
baseline to beat, and the verdict says whether fine-tuning is warranted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunebook.baseline import variants as baselines
from tunebook.baseline.settings import BaselineSettings
from tunebook.card.schema import JobCard
from tunebook.core import artifacts
from tunebook.core.runfolder import RunFolder, Step
from tunebook.errors import TunebookError
from tunebook.knowledge.context import KnowledgeIndex
from tunebook.knowledge.measure import choose_retriever, compare_retrievers
from tunebook.knowledge.passages import load_knowledge
from tunebook.modeling import models, predict
from tunebook.scoring import metrics
from tunebook.scoring.stats import bootstrap


@dataclass
class LoadedBase:
    """The base model loaded for prompting, and the longest answer it may generate."""

    model: Any
    tokenizer: Any
    path: str
    answer_budget: int


def load_base(run: RunFolder, settings: BaselineSettings) -> LoadedBase:
    """The base model for the prompting variants; the answer budget comes from the training answers."""
    path = models.resolve_base_model(settings.base_model)
    model, tokenizer = predict.load_for_inference(path)
    budget = predict.answer_budget(tokenizer, run.read_splits()["train"]["target"].tolist())
    return LoadedBase(model, tokenizer, path, budget)


@dataclass
class Proof:
    """Every variant's answers and figures, the best on validation, the best prompting variant, and the verdict."""

    runs: list[baselines.VariantRun]
    table: pd.DataFrame
    best: baselines.VariantRun
    prompting: baselines.VariantRun
    scores: dict  # the best variant's test metrics
    verdict: artifacts.BaselineVerdict
    base_identity: dict | None = None
    answer_budget: int | None = None
    retrieval: Retrieval | None = None


@dataclass
class Retrieval:
    """How each retriever found the validation questions' source articles, the one chosen, and its index."""

    table: pd.DataFrame
    chosen: str
    why: str
    index: KnowledgeIndex

    def record(self) -> dict:
        """The comparison as the step's results and ``retrieval.json`` keep it."""
        return {
            "chosen": self.chosen,
            "why": self.why,
            "k": self.index.k,
            "knowledge_version": self.index.knowledge.version,
            "table": json.loads(self.table.to_json(orient="index")),
        }


def choose_retrieval(run: RunFolder, card, splits: dict[str, pd.DataFrame]) -> Retrieval | None:
    """For a knowledge job: every available retriever scored on the validation split (recall@k, MRR of each
    question's source article), the card's choice or, for ``auto``, the best; None for a job without documents."""
    spec = card.knowledge
    if spec is None:
        return None
    knowledge = load_knowledge(run.knowledge_dir)
    names = None if spec.retriever == "auto" else [spec.retriever]
    table, fitted = compare_retrievers(knowledge, splits["val"], spec.k, names)
    if spec.retriever == "auto":
        chosen, why = choose_retriever(table, spec.k)
    else:
        chosen, why = spec.retriever, "named by the job card (knowledge.retriever)"
    return Retrieval(table, chosen, why, KnowledgeIndex(knowledge, fitted[chosen], spec.k))


def prove_baseline(run: RunFolder, base: LoadedBase, settings: BaselineSettings) -> Proof:
    """Run every cheap variant on validation and test, choose the best on validation, and judge it on test."""
    card, splits = run.read_job_card(), run.read_splits()
    retrieval = choose_retrieval(run, card, splits)
    runs = baselines.run_variants(
        base.model,
        base.tokenizer,
        card,
        splits,
        settings.k_shots,
        settings.seed,
        settings.eval_batch_size,
        base.answer_budget,
        index=retrieval.index if retrieval else None,
    )
    table = baselines.variant_table(card, runs, settings.bootstrap_resamples)
    best = baselines.best_variant(runs, card)
    scores = metrics.evaluate(card, best.test)
    verdict = ship_verdict(card, best, scores, settings.bootstrap_resamples)
    if retrieval is not None:
        verdict.text += "\n" + layers(card, best, retrieval)
    identity = models.model_identity(base.path)
    prompting = baselines.best_prompting(runs, card)
    return Proof(runs, table, best, prompting, scores, verdict, identity, base.answer_budget, retrieval)


def layers(card, best: baselines.VariantRun, retrieval: Retrieval) -> str:
    """Which layer carries what, in plain words, for a job answered from documents."""
    facts = (
        f"the documents carry the facts ({retrieval.index.k} passages per question, found by {retrieval.chosen}: "
        f"{retrieval.why})"
        if best.kind == "rag"
        else "this baseline answers without the documents, so facts it states come from the model's weights, "
        "which do not change when the documents do"
    )
    return f"Layers: {facts}; the prompt carries the task's instructions and rules at runtime" + (
        "; a tuned adapter, if trained, carries only the habit (answering from passages, in the job's tone)."
        if card.decision.repeats_enough and card.decision.examples_collectable
        else "."
    )


def ship_verdict(
    card: JobCard, best: baselines.VariantRun, test_scores: dict, resamples: int
) -> artifacts.BaselineVerdict:
    """Whether the chosen variant already does the job, judged on validation (its 95% interval shown where a target
    is met only by the estimate); the test figures are reported, not used."""
    val_scores = metrics.evaluate(card, best.val)
    table = bootstrap(card, best.val, resamples) if len(best.val) else None
    bands = {} if table is None else {key: (row["low"], row["high"]) for key, row in table.iterrows()}
    return metrics.baseline_verdict(card, val_scores, best.name, bands, test_scores)


def save_proof(run: RunFolder, proof: Proof) -> None:
    """Write every variant, the best and the best prompting one, and the step's results."""
    baselines.save_variants(
        run,
        run.read_job_card(),
        proof.runs,
        proof.best,
        proof.prompting,
        proof.table,
        proof.base_identity,
        proof.answer_budget,
    )
    results = baselines.recorded_results(proof.scores, proof.best, proof.prompting, proof.table, proof.verdict)
    if proof.retrieval is not None:
        results.retrieval = proof.retrieval.record()
        run.retrieval_report.write_text(json.dumps(results.retrieval, indent=2) + "\n", encoding="utf-8")
    run.write_results(Step.BASELINE, results)


def prove_run_folder(run_dir: str | Path, parameters: dict) -> Proof:
    """All of 02_prove_the_baseline without the notebook: load the base model, run the variants, save."""
    run, settings = RunFolder(Path(run_dir)), BaselineSettings.from_parameters(parameters)
    if run.results_file(Step.BASELINE).exists():
        raise TunebookError(
            f"{run.root} already holds a baseline; it is never overwritten. Use a copy of the run folder without "
            "its baseline folder and results/02_prove_the_baseline.json."
        )
    proof = prove_baseline(run, load_base(run, settings), settings)
    save_proof(run, proof)
    return proof
