"""The cheap alternatives fine-tuning has to beat, each scored the same way on the validation and test splits.

A careful engineer tries these before training: the trivial answer, prompting (zero-shot, fixed few-shot),
retrieval-augmented prompting (each input's most similar training examples as its shots) and, where the answer is a
choice from a fixed set, a classical text classifier. Every choice between them is made on the validation split.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.core.artifacts import BaselineResults, BaselineVerdict, System, VariantEntry, VariantFigures, Variants
from tunebook.core.runfolder import RunFolder
from tunebook.data.examples import answer_frame
from tunebook.data.splits import stratum
from tunebook.errors import TunebookError
from tunebook.knowledge.render import model_inputs
from tunebook.modeling.classical import ClassicalModel, Retriever, fit_classical, load_classical_file, save_classical
from tunebook.modeling.decision_rule import DecisionRule, fit_rule, save_rule
from tunebook.modeling.prompts import pick_shots
from tunebook.modeling.system import write_shots
from tunebook.scoring.metrics import evaluate, headline
from tunebook.scoring.stats import bootstrap


@dataclass
class VariantRun:
    """One baseline variant's predictions on the validation and test splits, its cost, and its decision rule."""

    name: str
    kind: str
    val: pd.DataFrame
    test: pd.DataFrame
    ms_per_example: float
    rule: DecisionRule | None = None
    notes: dict = field(default_factory=dict)
    shots: list[tuple[str, str]] = field(default_factory=list)  # fixed worked examples, the same for every input
    k_retrieved: int = 0  # worked examples retrieved per input from the train split (0: none)
    pool: list[tuple[str, str]] = field(default_factory=list)  # what they are retrieved from


def choice_of(card: JobCard, target: str) -> str:
    """The closed-set part of a target: the label, or the tool of a tool call."""
    return stratum(card, target)


def _frame(examples: pd.DataFrame) -> pd.DataFrame:
    return answer_frame(examples)


def with_choices(card: JobCard, examples: pd.DataFrame, answers: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """A classification prediction frame: the chosen label, its probability and one probability column per label."""
    frame = _frame(examples)
    frame["prediction"] = answers
    frame["confidence"] = (
        probs[np.arange(len(answers)), [card.choices.index(a) for a in answers]] if len(answers) else []
    )
    for j, name in enumerate(card.choices):
        frame[f"p_{name}"] = probs[:, j]
    return frame


def probabilities(card: JobCard, predictions: pd.DataFrame) -> np.ndarray:
    """The per-choice probability columns of a prediction frame, in card order."""
    missing = [f"p_{c}" for c in card.choices if f"p_{c}" not in predictions]
    if missing:
        raise TunebookError(f"these predictions carry no probabilities ({', '.join(missing)} missing).")
    return predictions[[f"p_{c}" for c in card.choices]].to_numpy(dtype=float)


# --- the trivial answer ---------------------------------------------------------------------------------------------


def trivial_answer(card: JobCard, train: pd.DataFrame) -> str:
    """The answer that needs no model: the majority label or tool call, every extraction field at its most frequent
    value, or the most typical training reply (the one closest to all others by TF-IDF cosine)."""
    if not len(train):
        raise TunebookError("the train split is empty: nothing to take a trivial answer from.")
    return task_of(card).trivial_answer(card, train)


def trivial_predictions(card: JobCard, train: pd.DataFrame, examples: pd.DataFrame) -> pd.DataFrame:
    """The trivial answer for every example (with its training frequency as the probability for choices)."""
    answer = trivial_answer(card, train)
    if card.choices:
        shares = train["target"].map(lambda t: choice_of(card, t)).value_counts(normalize=True)
        probs = np.tile([shares.get(c, 0.0) for c in card.choices], (len(examples), 1))
        frame = with_choices(card, examples, np.array([choice_of(card, answer)] * len(examples)), probs)
        frame["prediction"] = answer
        return frame
    frame = _frame(examples)
    frame["prediction"] = answer
    return frame


# --- running every variant -------------------------------------------------------------------------------------------


def _timed(function, *args, **kwargs) -> tuple[object, float]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def _choice_variant(
    name: str, kind: str, card: JobCard, splits: dict[str, pd.DataFrame], scorer, answerer, notes: dict | None = None
) -> VariantRun:
    """A variant that scores the fixed set of answers: probabilities on val fit its decision rule, applied on test."""
    val_probs = scorer(splits["val"])
    rule = fit_rule(card, val_probs, [choice_of(card, t) for t in splits["val"]["target"]])
    val = answerer(splits["val"], val_probs, rule)
    (test_probs, seconds) = _timed(scorer, splits["test"])
    test, answer_seconds = _timed(answerer, splits["test"], test_probs, rule)
    ms = 1000 * (seconds + answer_seconds) / max(1, len(splits["test"]))
    return VariantRun(name, kind, val, test, ms, rule, notes or {})


@dataclass
class _Prompted:
    """The language model as the prompting variants use it: scoring the fixed answers or generating, with shots."""

    model: object
    tokenizer: object
    card: JobCard
    batch_size: int
    progress: bool
    max_new_tokens: int | None

    def scorer(self, shots_for):
        """Probabilities over the card's choices for a frame, prompted with the shots ``shots_for`` gives."""
        from tunebook.modeling import predict  # deferred: torch loads only for a variant with a language model

        return lambda frame: predict.choose(
            self.model,
            self.tokenizer,
            self.card,
            model_inputs(frame),
            self.batch_size,
            self.progress,
            shots_for(frame),
        )[1]

    def answerer(self, shots_for):
        """Answers from chosen probabilities (a tool's arguments generated with the shots ``shots_for`` gives)."""
        from tunebook.modeling import predict  # deferred: torch loads only for a variant with a language model

        return lambda frame, probs, rule: predict.answer_choices(
            self.model,
            self.tokenizer,
            self.card,
            frame,
            probs,
            rule,
            batch_size=self.batch_size,
            progress=self.progress,
            shots=shots_for(frame),
            max_new_tokens=self.max_new_tokens,
        )

    def generator(self, shots_for):
        """Generated answers for a frame, prompted with the shots ``shots_for`` gives."""
        from tunebook.modeling import predict  # deferred: torch loads only for a variant with a language model

        return lambda frame: predict.predict(
            self.model,
            self.tokenizer,
            self.card,
            frame,
            self.batch_size,
            self.progress,
            shots_for(frame),
            self.max_new_tokens,
        )


def _trivial_variant(card: JobCard, splits: dict[str, pd.DataFrame]) -> VariantRun:
    train = splits["train"]
    val = trivial_predictions(card, train, splits["val"])
    test, seconds = _timed(trivial_predictions, card, train, splits["test"])
    ms = 1000 * seconds / max(1, len(splits["test"]))
    return VariantRun("trivial", "trivial", val, test, ms, notes={"answer": trivial_answer(card, train)})


def _prompted_variant(name: str, kind: str, lm: _Prompted, splits: dict[str, pd.DataFrame], shots_for) -> VariantRun:
    if lm.card.choices:
        return _choice_variant(name, kind, lm.card, splits, lm.scorer(shots_for), lm.answerer(shots_for))
    generated = lm.generator(shots_for)
    val = generated(splits["val"])
    test, seconds = _timed(generated, splits["test"])
    return VariantRun(name, kind, val, test, 1000 * seconds / max(1, len(splits["test"])))


def _classical_variant(lm: _Prompted, splits: dict[str, pd.DataFrame], seed: int, arguments) -> VariantRun:
    """The classical model on the fixed set of answers (a tool's arguments still come from the language model)."""
    classical, fit_seconds = _timed(fit_classical, lm.card, splits["train"], seed)
    run = _choice_variant(
        "classical",
        "classical",
        lm.card,
        splits,
        lambda frame: classical.predict_proba(frame["text"].tolist()),
        lm.answerer(arguments),
        notes={**classical.cv, "fit_seconds": round(fit_seconds, 2)},
    )
    run.notes["model"] = classical
    return run


def run_variants(
    model,
    tokenizer,
    card: JobCard,
    splits: dict[str, pd.DataFrame],
    k_shots: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    progress: bool = True,
    index=None,
) -> list[VariantRun]:
    """Every baseline variant that applies to the card's task kind, on the val and test splits; with a knowledge
    ``index`` (``knowledge.context.KnowledgeIndex``), also the base model answering from retrieved passages."""
    train = splits["train"]
    lm = _Prompted(model, tokenizer, card, batch_size, progress, max_new_tokens)
    retriever = Retriever(train)
    nearest = lambda frame: retriever.shots(frame["text"].tolist(), k_shots)  # noqa: E731
    fixed = pick_shots(card, train, k_shots, seed=seed)
    prompting = {"zero-shot": ("prompting", lambda frame: [], [], 0)}
    if fixed:
        prompting[f"{len(fixed)}-shot"] = ("prompting", lambda frame: fixed, fixed, 0)
    if k_shots > 0:
        prompting[f"retrieval {k_shots}-shot"] = ("retrieval", nearest, [], k_shots)
    runs = [_trivial_variant(card, splits)]
    pool = list(zip(train["text"], train["target"]))
    for name, (kind, shots_for, shots, retrieved) in prompting.items():
        runs.append(_prompted_variant(name, kind, lm, splits, shots_for))
        runs[-1].shots, runs[-1].k_retrieved, runs[-1].pool = shots, retrieved, pool if retrieved else []
    if card.choices:
        # a chosen tool's arguments come from the language model, prompted with the input's nearest training examples
        arguments = not task_of(card).choice_is_answer and k_shots > 0
        runs.append(_classical_variant(lm, splits, seed, nearest if arguments else lambda frame: []))
        runs[-1].k_retrieved, runs[-1].pool = (k_shots, pool) if arguments else (0, [])
    if index is not None:
        with_passages = {name: frame if name == "train" else index.attach(frame) for name, frame in splits.items()}
        runs.append(_prompted_variant("rag", "rag", lm, with_passages, lambda frame: []))
        runs[-1].notes["index"] = index
    return runs


# --- choosing and reporting ------------------------------------------------------------------------------------------


SIMPLICITY = {"trivial": 0, "classical": 1, "prompting": 2, "retrieval": 3, "rag": 4}  # fewer moving parts first
SELECTION_ALPHA = 0.05
SELECTION_RESAMPLES = 400


def _top_variant(runs: list[VariantRun], card: JobCard) -> VariantRun:
    """The variant with the best primary metric on validation (fewer must-never failures, then cheaper, on ties)."""

    def key(run: VariantRun) -> tuple:
        scores = evaluate(card, run.val)
        return (scores[scores["primary"]], -scores["must_never_failures"], -run.ms_per_example)

    return max(runs, key=key)


def worse_beyond_noise(
    card: JobCard, candidate: pd.DataFrame, top: pd.DataFrame, resamples: int = SELECTION_RESAMPLES, seed: int = 0
) -> float:
    """One-sided paired bootstrap p-value that ``candidate`` is worse than ``top`` on the primary metric: the share
    of resamples of the same examples (drawn once for both) where the candidate does at least as well."""
    primary = evaluate(card, top)["primary"]
    rng = np.random.default_rng(seed)
    n, ties = len(top), 0
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        ties += evaluate(card, candidate.iloc[rows])[primary] >= evaluate(card, top.iloc[rows])[primary]
    return (ties + 1) / (resamples + 1)


def best_variant(runs: list[VariantRun], card: JobCard, alpha: float = SELECTION_ALPHA) -> VariantRun:
    """The simplest variant that is not worse than the best one on validation beyond the validation split's noise
    (a one-sided paired bootstrap at ``alpha``) and has no more must-never failures there; simplest means trivial,
    then classical, then prompting with fewer worked examples, then retrieval. The test split plays no part.
    The reason is recorded in the chosen run's notes."""
    top = _top_variant(runs, card)
    top_scores = evaluate(card, top.val)
    primary = top_scores["primary"]
    for run in sorted(runs, key=lambda r: (SIMPLICITY.get(r.kind, 9), len(r.shots) + r.k_retrieved)):
        if run is top:
            break
        scores = evaluate(card, run.val)
        if scores["must_never_failures"] > top_scores["must_never_failures"]:
            continue
        p_value = worse_beyond_noise(card, run.val, top.val)
        if p_value >= alpha:
            run.notes["chosen"] = (
                f"simplest variant not worse than the best on validation ({top.name}, {primary} "
                f"{top_scores[primary]:.3f}) beyond noise: {scores[primary]:.3f}, paired bootstrap p = {p_value:.2f}"
            )
            return run
    top.notes["chosen"] = f"best {primary} on validation ({top_scores[primary]:.3f}); every simpler variant is worse"
    return top


def best_prompting(runs: list[VariantRun], card: JobCard) -> VariantRun:
    """The best prompting, retrieval-augmented or document-augmented variant on the validation split (what 04 also
    compares with)."""
    return _top_variant([r for r in runs if r.kind in ("prompting", "retrieval", "rag")], card)


def variant_table(card: JobCard, runs: list[VariantRun], resamples: int = 500, level: float = 0.95) -> pd.DataFrame:
    """One row per variant: validation primary metric, test primary metric with its bootstrap interval, must-never
    failures on test and milliseconds per example on this machine."""
    rows = {}
    for run in runs:
        val, test = evaluate(card, run.val), evaluate(card, run.test)
        primary = test["primary"]
        band = bootstrap(card, run.test, resamples, level).loc[primary]
        rows[run.name] = {
            "kind": run.kind,
            f"val {primary}": round(val[primary], 4),
            f"test {primary}": round(test[primary], 4),
            "test low": round(band["low"], 4),
            "test high": round(band["high"], 4),
            "test must-never failures": test["must_never_failures"],
            "ms per example": round(run.ms_per_example, 1),
        }
    return pd.DataFrame(rows).T


def variant_system(card: JobCard, variant: VariantRun, base_model: dict | None, answer_budget: int | None) -> System:
    """A variant as a system that can ship: what it is made of and what it needs to answer."""
    kind = {"prompting": "prompted", "retrieval": "retrieval"}.get(variant.kind, variant.kind)
    index = variant.notes.get("index")
    needs_lm = kind in ("prompted", "retrieval", "rag") or (kind == "classical" and not task_of(card).choice_is_answer)
    trivial = variant.notes.get("answer") if kind == "trivial" else None
    return System(
        kind=kind,
        variant=variant.name,
        needs_language_model=needs_lm,
        trained=False,
        k_shots=len(variant.shots) or variant.k_retrieved,
        decision_rule=variant.rule is not None,
        answer_budget=answer_budget if needs_lm else None,
        base_model=base_model if needs_lm else None,
        trivial_answer=trivial,
        trivial_shares=_shares(card, variant.test) if kind == "trivial" and card.choices else None,
        knowledge=knowledge_of(index) if index is not None else None,
    )


def knowledge_of(index) -> dict:
    """What a system records of the documents it answers from."""
    return {"version": index.knowledge.version, "retriever": index.name, "k": index.k}


def _shares(card: JobCard, trivial: pd.DataFrame) -> dict[str, float]:
    """The trivial answer's per-choice probabilities (each choice's training share), from its prediction frame."""
    first = trivial.iloc[0] if len(trivial) else {}
    return {c: float(first.get(f"p_{c}", 0.0)) for c in card.choices}


def save_variants(
    run: RunFolder,
    card: JobCard,
    variants: list[VariantRun],
    best: VariantRun,
    prompting: VariantRun,
    table: pd.DataFrame,
    base_model: dict | None = None,
    answer_budget: int | None = None,
) -> Path:
    """Write every variant's predictions, rule, what it needs to answer (as a system that can ship), the table, and
    the best and best-prompting variants' test predictions and metrics into the run folder's baseline artifacts."""
    for variant in variants:
        run.write_predictions(variant.val, run.variant_predictions(variant.name, "val"))
        run.write_predictions(variant.test, run.variant_predictions(variant.name, "test"))
        if variant.rule is not None:
            save_rule(variant.rule, run.variant_rule(variant.name))
        if "model" in variant.notes:
            save_classical(variant.notes["model"], run.variant_model(variant.name))
        if "index" in variant.notes:
            variant.notes["index"].save(run.knowledge_index)
        if variant.shots:
            write_shots(variant.shots, run.variant_shots(variant.name))
        elif variant.pool:  # the train split its worked examples are retrieved from
            write_shots(variant.pool, run.variant_shots(variant.name))
        run.write_system(variant_system(card, variant, base_model, answer_budget), run.variant_system(variant.name))
    for role, chosen in (("best", best), ("prompting", prompting)):
        run.write_predictions(chosen.test, run.baseline_predictions(role))
        run.write_scores(run.baseline_scores(role), evaluate(card, chosen.test), chosen.name)
    summary = Variants(
        best=best.name,
        best_kind=best.kind,
        best_prompting=prompting.name,
        variants={
            v.name: VariantEntry(
                kind=v.kind,
                folder=run.relative(run.variant_dir(v.name)),
                notes=json.loads(
                    json.dumps({k: x for k, x in v.notes.items() if k not in ("model", "index")}, default=str)
                ),
            )
            for v in variants
        },
        table=json.loads(table.to_json(orient="index")),
    )
    run.write_variants(summary)
    return run.baseline_dir


def load_variant(run: RunFolder, name: str, split: str = "test") -> pd.DataFrame:
    """One variant's stored predictions on ``split`` (val or test)."""
    return run.read_predictions(run.variant_predictions(name, split))


def load_classical(run: RunFolder) -> ClassicalModel | None:
    """The classical model 02 fitted, if the job has one."""
    return load_classical_file(run.classical_model) if run.classical_model.is_file() else None


def recorded_results(
    scores: dict, best: VariantRun, prompting: VariantRun, table: pd.DataFrame, verdict: BaselineVerdict
) -> BaselineResults:
    """The figures 02_prove_the_baseline records: the best variant's test metrics, the verdict, each variant's cost."""
    primary = scores["primary"]
    return BaselineResults(
        primary=primary,
        metrics=headline(scores),
        variant=best.name,
        variant_kind=best.kind,
        best_prompting=prompting.name,
        verdict=verdict.text,
        meets_targets=verdict.meets_targets,
        judged_on=verdict.judged_on,
        chosen_because=str(best.notes.get("chosen", "")),
        variants={
            name: VariantFigures(
                val=row[f"val {primary}"], test=row[f"test {primary}"], ms_per_example=row["ms per example"]
            )
            for name, row in table.iterrows()
        },
    )
