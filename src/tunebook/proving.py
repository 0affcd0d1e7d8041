"""02_prove_the_baseline's work: every cheap alternative answers validation and test, the best on validation is the
baseline to beat, and the verdict says whether fine-tuning is warranted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunebook import baselines, metrics, models, predict
from tunebook.errors import TunebookError
from tunebook.pipeline import StepSettings
from tunebook.runfolder import RunFolder
from tunebook.stats import bootstrap


@dataclass
class BaselineSettings(StepSettings):
    """02_prove_the_baseline's parameters, checked once (the notebook's parameters cell declares the same names)."""

    base_model: str = "bundled"
    eval_batch_size: int = 16
    k_shots: int = 3
    seed: int = 0
    bootstrap_resamples: int = 500

    def __post_init__(self) -> None:
        self.require_positive("eval_batch_size", "bootstrap_resamples")
        if self.k_shots < 0:
            raise TunebookError(f"K_SHOTS must be 0 (zero-shot only) or more, got {self.k_shots}.")


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
    verdict: dict  # judged on validation
    base_identity: dict | None = None
    answer_budget: int | None = None


def prove_baseline(run: RunFolder, base: LoadedBase, settings: BaselineSettings) -> Proof:
    """Run every cheap variant on validation and test, choose the best on validation, and judge it on test."""
    card, splits = run.read_job_card(), run.read_splits()
    runs = baselines.run_variants(
        base.model,
        base.tokenizer,
        card,
        splits,
        settings.k_shots,
        settings.seed,
        settings.eval_batch_size,
        base.answer_budget,
    )
    table = baselines.variant_table(card, runs, settings.bootstrap_resamples)
    best = baselines.best_variant(runs, card)
    scores = metrics.evaluate(card, best.test)
    verdict = ship_verdict(card, best, scores, settings.bootstrap_resamples)
    identity = models.model_identity(base.path)
    prompting = baselines.best_prompting(runs, card)
    return Proof(runs, table, best, prompting, scores, verdict, identity, base.answer_budget)


def ship_verdict(card, best: baselines.VariantRun, test_scores: dict, resamples: int) -> dict:
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
    run.write_results(
        "02_prove_the_baseline",
        baselines.recorded_results(proof.scores, proof.best, proof.prompting, proof.table, proof.verdict),
    )


def prove_run_folder(run_dir: str | Path, parameters: dict) -> Proof:
    """All of 02_prove_the_baseline without the notebook: load the base model, run the variants, save."""
    run, settings = RunFolder(Path(run_dir)), BaselineSettings.from_parameters(parameters)
    if run.results_file("02_prove_the_baseline").exists():
        raise TunebookError(
            f"{run.root} already holds a baseline; it is never overwritten. Use a copy of the run folder without "
            "its baseline folder and results/02_prove_the_baseline.json."
        )
    proof = prove_baseline(run, load_base(run, settings), settings)
    save_proof(run, proof)
    return proof
