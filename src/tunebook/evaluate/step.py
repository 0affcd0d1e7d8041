"""04_evaluate's work: the tuned model's answers on the frozen test split, next to the baselines' answers, with
intervals, paired tests, slices, flips, the overfitting and general-knowledge checks and (for classification) an
abstention threshold chosen on validation; saved to the run folder for the release step."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunebook.baseline import variants as baselines
from tunebook.card.grounding import freshness
from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core import artifacts, lineage
from tunebook.core.runfolder import RunFolder, Step, manifest_path, read_manifest
from tunebook.errors import TunebookError
from tunebook.evaluate import general_probe as regression
from tunebook.evaluate.settings import EvaluateSettings
from tunebook.knowledge.context import build_index, load_index
from tunebook.knowledge.passages import load_knowledge
from tunebook.modeling import decision_rule as decide
from tunebook.modeling import models, predict, system
from tunebook.scoring import metrics, stats


@dataclass
class TunedModel:
    """The adapter of a run folder loaded on its base model, with what scoring it needs."""

    model: Any
    tokenizer: Any
    manifest: artifacts.Manifest
    base_model: str
    answer_budget: int


def load_tuned(run: RunFolder, base_model: str = "bundled") -> TunedModel:
    """The run's adapter on its base model, after checking it was trained on this job card and base model."""
    manifest = run.read_manifest()
    resolved = models.resolve_base_model(base_model)
    lineage.check_adapter_matches(manifest, run.read_job_card(), models.model_identity(resolved))
    model, tokenizer = predict.load_trained(resolved, run.adapter_dir, manifest)
    budget = predict.answer_budget(tokenizer, run.read_splits()["train"]["target"].tolist())
    return TunedModel(model, tokenizer, manifest, resolved, budget)


def load_candidate(run: RunFolder, base_model: str = "bundled") -> TunedModel | system.LoadedSystem:
    """What 04 evaluates: the model 03 trained, or, where this run did not train, the baseline 02 chose, made the
    run's system (``system/``) and loaded to answer as it will be served."""
    if run.trained_weights() is not None:
        return load_tuned(run, base_model)
    chosen = run.read_variants().best
    system.adopt_variant(run, chosen, run.read_results(Step.BASELINE).verdict)
    return system.load_system(run, base_model)


def describe_candidate(candidate: TunedModel | system.LoadedSystem) -> str:
    """What is evaluated, in one line."""
    if isinstance(candidate, system.LoadedSystem):
        return f"no trained model in this run: evaluating the system 02 chose, {candidate.spec.describe()}"
    manifest = candidate.manifest
    return f"adapter trained on dataset {manifest.dataset_hash[:12]} · {manifest.method}"


@dataclass
class Evaluation:
    """Everything 04_evaluate measured; ``comparison()`` and ``results()`` are what it saves."""

    tuned: pd.DataFrame
    tuned_val: pd.DataFrame
    rule: Any
    scores: dict
    frames: dict[str, pd.DataFrame]  # prompting, baseline, tuned: test-split predictions
    named_scores: dict[str, dict]  # the same three, scored
    baseline_variant: str
    prompting_variant: str
    intervals: dict[str, pd.DataFrame]
    paired: artifacts.PairedTest
    paired_prompting: artifacts.PairedTest
    usable: dict[str, float | None]
    sliced: dict[str, pd.DataFrame]
    flipped: pd.DataFrame
    overfit: artifacts.Overfitting | None
    calibration: dict | None
    general: artifacts.GeneralProbe | None  # None where no weights were trained
    system: artifacts.System | None = None  # the evaluated system when it is not a trained model
    answer_budget: int | None = None
    agreement_with_baseline_step: float | None = None
    paired_trivial: artifacts.PairedTest | None = None
    freshness: pd.DataFrame | None = None  # knowledge jobs: every answer set asked again after the documents changed
    paired_blind: artifacts.PairedTest | None = (
        None  # hybrid jobs: the tuned model with passages against the document-blind one
    )

    def labels(self) -> dict[str, str]:
        """Each compared answer set's name as tables show it."""
        tuned = "tuned" if self.system is None or self.system.trained else f"released system ({self.system.variant})"
        found = {
            "trivial": "trivial answer",
            "prompting": f"prompting ({self.prompting_variant})",
            "baseline": f"best baseline ({self.baseline_variant})",
            "tuned": tuned + (" with passages" if "blind" in self.named_scores else ""),
            "blind": "tuned, document-blind",
        }
        return {name: label for name, label in found.items() if name in self.named_scores}

    def comparison(self) -> artifacts.Comparison:
        """evaluation/comparison.json."""
        return artifacts.Comparison(
            intervals=stats.as_records(self.intervals),
            mcnemar=self.paired,
            mcnemar_prompting=self.paired_prompting,
            baseline_variant=self.baseline_variant,
            prompting_variant=self.prompting_variant,
            decision_rule=decide.describe(self.rule) if self.rule is not None else None,
            usable_output_rate=self.usable,
            overfitting=self.overfit,
            calibration=self.calibration,
            regression_probe=self.general,
            slices=stats.as_records(self.sliced),
            system=None
            if self.system is None
            else {**self.system.model_dump(), "agreement_with_02": self.agreement_with_baseline_step},
            mcnemar_trivial=self.paired_trivial,
            mcnemar_blind=self.paired_blind,
            freshness=None if self.freshness is None else json.loads(self.freshness.to_json(orient="index")),
        )

    def results(self) -> artifacts.EvaluateResults:
        """results/04_evaluate.json."""
        paired = self.paired
        return artifacts.EvaluateResults(
            primary=self.scores["primary"],
            metrics=metrics.headline(self.scores),
            baseline_variant=self.baseline_variant,
            mcnemar_p_value=paired.p_value,
            difference_is_real=paired.significant,
            beats_baseline=paired.better,
            mcnemar_prompting_p_value=self.paired_prompting.p_value,
            usable_output_rate=self.usable["tuned"],
            general_regression=None if self.general is None else self.general.regressed,
            system_kind=self.system.kind if self.system is not None else "adapter",
            system_variant=self.system.variant if self.system is not None else "tuned",
            mcnemar_trivial_p_value=None if self.paired_trivial is None else self.paired_trivial.p_value,
        )


def evaluate_run(
    run: RunFolder, candidate: TunedModel | system.LoadedSystem, settings: EvaluateSettings
) -> Evaluation:
    """Score the candidate (a trained model, its decision rule fitted on validation here; or the system 02 chose,
    with its rule fitted there) on the test split and compare it with the baselines 02 saved, measured the same way."""
    card, splits = run.read_job_card(), run.read_splits()
    if isinstance(candidate, system.LoadedSystem):
        tuned = candidate.answer(splits["test"], settings.eval_batch_size, progress=True)
        tuned_val = (
            candidate.answer(splits["val"], settings.eval_batch_size, progress=True)
            if task_of(card).choice_is_answer
            else None
        )
        rule, extra = candidate.rule, {"system": candidate.spec, "answer_budget": candidate.spec.answer_budget}
        from_02 = run.read_predictions(run.variant_predictions(candidate.spec.variant, "test"))
        extra["agreement_with_baseline_step"] = (
            float(system.same_answers(from_02, tuned).mean()) if len(tuned) else 1.0
        )
        overfit, general = None, None
    else:
        model, tokenizer = candidate.model, candidate.tokenizer
        answered = _with_passages(run, candidate, splits)
        tuned, tuned_val, rule, tuned_probs = predict.predict_with_rule(
            model,
            tokenizer,
            card,
            answered,
            baselines.load_classical(run),
            settings.eval_batch_size,
            max_new_tokens=candidate.answer_budget,
        )
        extra = {"answer_budget": candidate.answer_budget}
        overfit = _overfitting(
            candidate, card, answered["train"], answered["test"], settings, tuned, rule, tuned_probs
        )
        general = _general_probe(candidate, settings.regression_max_increase)
    scores = metrics.evaluate(card, tuned)
    stored = {name: run.read_scores(run.baseline_scores(name)) for name in ("prompting", "best")}
    frames = {
        "prompting": run.read_predictions(run.baseline_predictions("prompting")),
        "baseline": run.read_predictions(run.baseline_predictions("best")),
        "tuned": tuned,
    }
    blind = _blind_answers(run, candidate, splits["test"], settings)
    if blind is not None:
        frames["blind"] = blind
    trivial = run.variant_predictions("trivial", "test")
    trivial_frame = run.read_predictions(trivial) if trivial.is_file() else None
    return Evaluation(
        tuned=tuned,
        tuned_val=tuned_val,
        rule=rule,
        scores=scores,
        frames=frames,
        named_scores={
            **({"trivial": metrics.evaluate(card, trivial_frame)} if trivial_frame is not None else {}),
            "prompting": stored["prompting"].as_dict(),
            "baseline": stored["best"].as_dict(),
            "tuned": scores,
            **({"blind": metrics.evaluate(card, blind)} if blind is not None else {}),
        },
        baseline_variant=stored["best"].variant,
        prompting_variant=stored["prompting"].variant,
        intervals={
            name: stats.bootstrap(card, frame, settings.bootstrap_resamples, settings.confidence)
            for name, frame in frames.items()
        },
        paired=stats.mcnemar(card, frames["baseline"], tuned),
        paired_prompting=stats.mcnemar(card, frames["prompting"], tuned),
        usable={name: stats.valid_output_rate(card, frame) for name, frame in frames.items()},
        sliced={name: stats.slices(card, frame, settings.tag) for name, frame in frames.items()},
        flipped=stats.flips(card, frames["baseline"], tuned),
        overfit=overfit,
        calibration=_calibration(card, tuned_val, tuned) if tuned_val is not None else None,
        general=general,
        paired_trivial=stats.mcnemar(card, trivial_frame, tuned) if trivial_frame is not None else None,
        paired_blind=stats.mcnemar(card, blind, tuned) if blind is not None else None,
        freshness=freshness_test(
            run,
            {
                "prompting": (stored["prompting"].variant, frames["prompting"]),
                "baseline": (stored["best"].variant, frames["baseline"]),
                "tuned": (extra["system"].variant if "system" in extra else "tuned", tuned),
                **({"blind": ("blind", blind)} if blind is not None else {}),
            },
            candidate,
            settings,
            rule,
        ),
        **extra,
    )


def freshness_test(
    run: RunFolder,
    frames: dict[str, tuple[str, pd.DataFrame]],
    candidate: TunedModel | system.LoadedSystem,
    settings: EvaluateSettings,
    rule: decide.DecisionRule | None = None,
) -> pd.DataFrame | None:
    """For a job with a later version of its documents: each answer set asked the same test questions again with
    nothing retrained. Answers given from passages are given again from the later documents (the same retriever
    refitted, the same k); answers given without documents cannot change, and are scored against the later facts
    as they are. Per answer set: the stale-fact rate, fresh-fact accuracy and hand-overs where the article was
    removed, beside the fact accuracy on the documents it was evaluated with. ``frames``: each answer set's name, as
    (the variant or system it came from, its test answers). None without later documents."""
    card = run.read_job_card()
    if card.knowledge is None or not run.fresh_knowledge_dir.is_dir():
        return None
    # deferred: the knowledge layer loads its retrievers only for a job with documents

    fresh = load_knowledge(run.fresh_knowledge_dir)
    test = run.read_splits()["test"]
    is_candidate = isinstance(candidate, system.LoadedSystem) and candidate.index is not None
    asked_again: dict[str, pd.DataFrame] = {}
    released = load_index(run.knowledge_index)
    updated = build_index(fresh, released.name, released.k)  # the same retriever and k over the later documents

    def again(variant: str) -> pd.DataFrame:
        """The answer set ``variant`` asked again from the later documents."""
        if variant in asked_again:
            return asked_again[variant]
        if is_candidate and variant == candidate.spec.variant:
            asked_again[variant] = candidate.with_knowledge(fresh, updated).answer(test, settings.eval_batch_size)
            return asked_again[variant]
        if isinstance(candidate, TunedModel) and variant == "tuned":  # the hybrid adapter, nothing retrained
            asked_again[variant] = predict.predict(
                candidate.model,
                candidate.tokenizer,
                card,
                updated.attach(test),
                settings.eval_batch_size,
                max_new_tokens=candidate.answer_budget,
                rule=rule,
                other_model=baselines.load_classical(run) if rule is not None and rule.mix_weight else None,
            )
            return asked_again[variant]
        # 02's variant answering from passages: the base model with the same retriever refitted on the later documents
        spec = run.read_system(run.variant_system(variant))
        if isinstance(candidate, system.LoadedSystem) and not candidate.spec.trained and candidate.model is not None:
            base, tokenizer = candidate.model, candidate.tokenizer
        else:
            path = (
                candidate.base_model
                if isinstance(candidate, TunedModel)
                else models.resolve_base_model(settings.base_model)
            )
            base, tokenizer = predict.load_for_inference(path)
        asked_again[variant] = predict.predict(
            base, tokenizer, card, updated.attach(test), settings.eval_batch_size, max_new_tokens=spec.answer_budget
        )
        return asked_again[variant]

    rows = {}
    for name, (variant, frame) in frames.items():
        from_passages = "retrieved" in frame
        later = again(variant) if from_passages else frame
        figures = freshness(card, later)
        rows[name] = {
            "answers from": "passages" if from_passages else "weights only",
            "fact accuracy (documents evaluated)": round(metrics.evaluate(card, frame).get("fact_accuracy", 0.0), 4),
            **{key: round(value, 4) if isinstance(value, float) else value for key, value in figures.items()},
        }
    return pd.DataFrame(rows).T


def _with_passages(run: RunFolder, candidate: TunedModel, splits: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The splits with retrieved passages where the adapter was trained with them (as it will answer), else as given."""
    if not candidate.manifest.knowledge_version:
        return splits
    # deferred: the knowledge layer loads its retrievers only for a job with documents

    index = load_index(run.knowledge_index)
    return {name: index.attach(frame) for name, frame in splits.items()}


def _blind_answers(
    run: RunFolder, candidate: TunedModel | system.LoadedSystem, test: pd.DataFrame, settings: EvaluateSettings
) -> pd.DataFrame | None:
    """Hybrid jobs: the document-blind adapter's test answers (no passages), or None where 03 trained none."""
    if isinstance(candidate, system.LoadedSystem) or not manifest_path(run.blind_adapter_dir).is_file():
        return None
    model, tokenizer = predict.load_trained(
        candidate.base_model, run.blind_adapter_dir, read_manifest(run.blind_adapter_dir)
    )
    return predict.predict(
        model, tokenizer, run.read_job_card(), test, settings.eval_batch_size, max_new_tokens=candidate.answer_budget
    )


def _overfitting(
    tuned_model: TunedModel,
    card: JobCard,
    train: pd.DataFrame,
    test: pd.DataFrame,
    settings: EvaluateSettings,
    tuned: pd.DataFrame,
    rule: decide.DecisionRule | None,
    test_probs: np.ndarray | None,
) -> artifacts.Overfitting | None:
    """The adapter's own primary metric (no decision rule, no mixture) on a sample of training examples and on the
    test split, with a warning past the gap; None when TRAIN_SAMPLE is 0. A rule that mixes in the classical model
    would compare a memorising classifier on its own training rows, or hide a memorising adapter behind it. On test
    the adapter's probabilities are already known: it is not run there again."""
    if settings.train_sample <= 0:
        return None
    sample = train.sample(min(settings.train_sample, len(train)), random_state=0)
    model, tokenizer, budget = tuned_model.model, tuned_model.tokenizer, tuned_model.answer_budget
    on_train = predict.predict(model, tokenizer, card, sample, settings.eval_batch_size, max_new_tokens=budget)
    if rule is None:
        on_test = tuned
    else:
        on_test = predict.answer_choices(
            model, tokenizer, card, test, test_probs, batch_size=settings.eval_batch_size, max_new_tokens=budget
        )
    return stats.overfitting(card, on_train, on_test, settings.overfit_gap)


def _calibration(card: JobCard, tuned_val: pd.DataFrame, tuned: pd.DataFrame) -> dict | None:
    """For classification: the abstention threshold chosen on validation for the card's accuracy target, and what
    it does on the test split."""
    if card.task_kind != "classification":
        return None
    required = card.targets.accuracy or card.targets.macro_f1 or 0.9
    chosen = stats.abstain_threshold(tuned_val, required)
    return {"validation": chosen, "test": stats.apply_threshold(tuned, chosen["threshold"])}


def _general_probe(tuned_model: TunedModel, max_increase: float) -> artifacts.GeneralProbe:
    """Loss on general text and instructions, tuned against base (a fully fine-tuned model needs the base loaded)."""
    full = tuned_model.manifest.full_fine_tune
    base_only = predict.load_for_inference(tuned_model.base_model)[0] if full else None
    return regression.regression_probe(
        tuned_model.model, tuned_model.tokenizer, base=base_only, max_increase=max_increase
    )


def save_evaluation(run: RunFolder, evaluation: Evaluation) -> None:
    """Write the decision rule, the system it evaluated (for a trained model: made the run's system here), the
    predictions and scores, the comparison and the step's results."""
    if evaluation.rule is not None:
        decide.save_rule(evaluation.rule, run.tuned_rule)
    if evaluation.system is None:
        why = "trained by 03 and evaluated by 04 against the best cheap baseline"
        evaluation.system = system.adopt_trained(run, evaluation.rule, evaluation.answer_budget, why)
    run.write_predictions(evaluation.tuned, run.tuned_predictions)
    run.write_scores(run.tuned_scores, evaluation.scores)
    run.write_comparison(evaluation.comparison())
    run.write_results(Step.EVALUATE, evaluation.results())


def evaluate_run_folder(run_dir: str | Path, parameters: dict) -> Evaluation:
    """All of 04_evaluate without the notebook: load, evaluate, save."""
    run, settings = RunFolder(Path(run_dir)), EvaluateSettings.from_parameters(parameters)
    if run.tuned_scores.exists():
        raise TunebookError(
            f"{run.evaluation_dir} already holds an evaluation; it is never overwritten. Evaluate a copy of the run "
            "folder without its evaluation folder."
        )
    evaluation = evaluate_run(run, load_candidate(run, settings.base_model), settings)
    save_evaluation(run, evaluation)
    return evaluation
