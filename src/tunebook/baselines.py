"""The cheap alternatives fine-tuning has to beat, each scored the same way on the validation and test splits.

A careful engineer tries these before training: the trivial answer, prompting (zero-shot, fixed few-shot),
retrieval-augmented prompting (each input's most similar training examples as its shots) and, where the answer is a
choice from a fixed set, a classical text classifier. Every choice between them is made on the validation split.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_union

from tunebook.data import stratum
from tunebook.decide import DecisionRule, fit_rule, load_rule, save_rule
from tunebook.errors import TunebookError
from tunebook.job import JobCard
from tunebook.metrics import evaluate
from tunebook.outputs import canonical

FOLDER = "baseline"
RULE_FILE = (
    "evaluation/decision_rule.json"  # the tuned model's rule, fitted on validation by 04 (same path in a release)
)
CLASSICAL_FILE = f"{FOLDER}/variants/classical/model.joblib"
CLASSICAL_C = (0.3, 1.0, 3.0, 10.0, 30.0)


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


def _text_features() -> object:
    """Word 1-2 grams and character 2-5 grams, TF-IDF weighted (sublinear term frequency)."""
    return make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    )


def choice_of(card: JobCard, target: str) -> str:
    """The closed-set part of a target: the label, or the tool of a tool call."""
    return stratum(card, target)


def _frame(examples: pd.DataFrame) -> pd.DataFrame:
    return examples[["id", "text", "target", "tags"]].reset_index(drop=True).copy()


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
    if card.task_kind in ("classification", "tool_selection"):
        return Counter(train["target"]).most_common(1)[0][0]
    if card.task_kind == "extraction":
        records = [json.loads(t) for t in train["target"]]
        fields = list(card.output_schema.get("properties", {}))
        common = {f: Counter(json.dumps(r.get(f)) for r in records).most_common(1)[0][0] for f in fields}
        return canonical(card, {f: json.loads(v) for f, v in common.items()})
    vectors = TfidfVectorizer(sublinear_tf=True).fit_transform(train["target"])
    centrality = np.asarray((vectors @ vectors.T).mean(axis=1)).ravel()
    return train["target"].iloc[int(centrality.argmax())]


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


# --- retrieval ------------------------------------------------------------------------------------------------------


class Retriever:
    """The training examples most similar to an input (TF-IDF cosine), built on the train split only."""

    def __init__(self, train: pd.DataFrame):
        self.texts, self.targets = train["text"].tolist(), train["target"].tolist()
        self.vectorizer = _text_features().fit(self.texts)
        self.matrix = self.vectorizer.transform(self.texts)

    def shots(self, texts: list[str], k: int) -> list[list[tuple[str, str]]]:
        """For each text, its ``k`` nearest training examples as (text, target) shots, the nearest last (closest
        to the input in the prompt)."""
        if k <= 0:
            return [[] for _ in texts]
        similarity = (self.vectorizer.transform(texts) @ self.matrix.T).toarray()
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        return [[(self.texts[j], self.targets[j]) for j in reversed(row)] for row in nearest]


# --- the classical model ---------------------------------------------------------------------------------------------


@dataclass
class ClassicalModel:
    """A TF-IDF logistic regression over the card's choices, its regularisation chosen by cross-validation on train."""

    pipeline: Pipeline
    choices: list[str]
    cv: dict

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities over the card's choices, in card order (choices unseen in training get 0)."""
        raw = self.pipeline.predict_proba(texts)
        known = list(self.pipeline.classes_)
        out = np.zeros((len(texts), len(self.choices)))
        for j, name in enumerate(self.choices):
            if name in known:
                out[:, j] = raw[:, known.index(name)]
        return out


def fit_classical(card: JobCard, train: pd.DataFrame, seed: int = 0) -> ClassicalModel:
    """Fit the classical model on the train split; C is chosen by stratified cross-validation on train (macro-F1)."""
    if not card.choices:
        raise TunebookError(f"a classical model needs a fixed set of answers; a {card.task_kind} job has none.")
    y = train["target"].map(lambda t: choice_of(card, t))
    if y.nunique() < 2:
        raise TunebookError(f"the train split holds only one answer ({y.iloc[0]!r}): a classifier needs at least two.")
    pipeline = Pipeline(
        [
            ("features", _text_features()),
            ("model", LogisticRegression(max_iter=3000, class_weight="balanced", random_state=seed)),
        ]
    )
    folds = int(min(5, y.value_counts().min()))
    if folds >= 2:
        search = GridSearchCV(
            pipeline,
            {"model__C": list(CLASSICAL_C)},
            scoring="f1_macro",
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
            n_jobs=1,
        ).fit(train["text"], y)
        pipeline, cv = (
            search.best_estimator_,
            {"C": search.best_params_["model__C"], "folds": folds, "cv_macro_f1": float(search.best_score_)},
        )
    else:  # a choice with a single training example leaves nothing to cross-validate on
        pipeline.set_params(model__C=1.0).fit(train["text"], y)
        cv = {"C": 1.0, "folds": 0, "cv_macro_f1": None}
    return ClassicalModel(pipeline, list(card.choices), cv)


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
) -> list[VariantRun]:
    """Every baseline variant that applies to the card's task kind, on the val and test splits."""
    from tunebook import predict
    from tunebook.prompts import pick_shots

    train = splits["train"]
    runs: list[VariantRun] = []

    trivial_val = trivial_predictions(card, train, splits["val"])
    trivial_test, seconds = _timed(trivial_predictions, card, train, splits["test"])
    runs.append(
        VariantRun(
            "trivial",
            "trivial",
            trivial_val,
            trivial_test,
            1000 * seconds / max(1, len(splits["test"])),
            notes={"answer": trivial_answer(card, train)},
        )
    )

    def answers_with(shots_for):
        """Answers from chosen probabilities (a tool's arguments generated with the shots ``shots_for`` gives)."""
        return lambda frame, probs, rule: predict.answer_choices(
            model,
            tokenizer,
            card,
            frame,
            probs,
            rule,
            batch_size=batch_size,
            progress=progress,
            shots=shots_for(frame),
            max_new_tokens=max_new_tokens,
        )

    retriever = Retriever(train)
    fixed = pick_shots(card, train, k_shots, seed=seed)
    prompting = {"zero-shot": ("prompting", lambda frame: [])}
    if fixed:
        prompting[f"{len(fixed)}-shot"] = ("prompting", lambda frame: fixed)
    if k_shots > 0:
        prompting[f"retrieval {k_shots}-shot"] = (
            "retrieval",
            lambda frame: retriever.shots(frame["text"].tolist(), k_shots),
        )
    for name, (kind, shots_for) in prompting.items():
        if card.choices:
            runs.append(
                _choice_variant(
                    name,
                    kind,
                    card,
                    splits,
                    lambda frame, s=shots_for: predict.choose(
                        model, tokenizer, card, frame["text"].tolist(), batch_size, progress, s(frame)
                    )[1],
                    answers_with(shots_for),
                )
            )
        else:

            def generated(frame, s=shots_for):
                return predict.predict(model, tokenizer, card, frame, batch_size, progress, s(frame), max_new_tokens)

            val = generated(splits["val"])
            test, seconds = _timed(generated, splits["test"])
            runs.append(VariantRun(name, kind, val, test, 1000 * seconds / max(1, len(splits["test"]))))

    if card.choices:
        classical, fit_seconds = _timed(fit_classical, card, train, seed)
        # a chosen tool's arguments come from the language model, prompted with the input's nearest training examples
        arguments = (
            (lambda frame: retriever.shots(frame["text"].tolist(), k_shots))
            if card.task_kind == "tool_selection"
            else (lambda frame: [])
        )
        runs.append(
            _choice_variant(
                "classical",
                "classical",
                card,
                splits,
                lambda frame: classical.predict_proba(frame["text"].tolist()),
                answers_with(arguments),
                notes={**classical.cv, "fit_seconds": round(fit_seconds, 2)},
            )
        )
        runs[-1].notes["model"] = classical
    return runs


# --- choosing and reporting ------------------------------------------------------------------------------------------


def best_variant(runs: list[VariantRun], card: JobCard) -> VariantRun:
    """The variant with the best primary metric on the validation split (fewer must-never failures, then the
    cheaper one, on ties). The test split plays no part in the choice."""

    def key(run: VariantRun) -> tuple:
        scores = evaluate(card, run.val)
        return (scores[scores["primary"]], -scores["must_never_failures"], -run.ms_per_example)

    return max(runs, key=key)


def best_prompting(runs: list[VariantRun], card: JobCard) -> VariantRun:
    """The best prompting or retrieval-augmented variant on the validation split (what 04 also compares with)."""
    return best_variant([r for r in runs if r.kind in ("prompting", "retrieval")], card)


def variant_table(card: JobCard, runs: list[VariantRun], resamples: int = 500, level: float = 0.95) -> pd.DataFrame:
    """One row per variant: validation primary metric, test primary metric with its bootstrap interval, must-never
    failures on test and milliseconds per example on this machine."""
    from tunebook.stats import bootstrap

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


def save_variants(
    run_dir: str | Path,
    card: JobCard,
    runs: list[VariantRun],
    best: VariantRun,
    prompting: VariantRun,
    table: pd.DataFrame,
) -> Path:
    """Write every variant's predictions and rule, the table, and the best and best-prompting variants' test
    predictions and metrics under ``<run>/baseline``."""
    import joblib

    from tunebook.predict import save_predictions

    folder = Path(run_dir) / FOLDER
    for run in runs:
        part = folder / "variants" / _slug(run.name)
        save_predictions(run.val, part / "val.jsonl")
        save_predictions(run.test, part / "test.jsonl")
        if run.rule is not None:
            save_rule(run.rule, part / "decision_rule.json")
        if "model" in run.notes:
            joblib.dump(
                run.notes["model"], part / "model.joblib"
            )  # sklearn's own persistence; written and read by tunebook only
    for role, run in (("", best), ("prompting_", prompting)):
        save_predictions(run.test, folder / f"{role}predictions.jsonl")
        (folder / f"{role}metrics.json").write_text(
            json.dumps({**evaluate(card, run.test), "variant": run.name}, indent=2)
        )
    summary = {
        "best": best.name,
        "best_kind": best.kind,
        "best_prompting": prompting.name,
        "variants": {
            r.name: {
                "kind": r.kind,
                "folder": f"variants/{_slug(r.name)}",
                "notes": {k: v for k, v in r.notes.items() if k != "model"},
            }
            for r in runs
        },
        "table": json.loads(table.to_json(orient="index")),
    }
    (folder / "variants.json").write_text(json.dumps(summary, indent=2, default=str))
    return folder


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("-", "_")


def load_variant(run_dir: str | Path, name: str, split: str = "test") -> pd.DataFrame:
    """One variant's stored predictions on ``split`` (val or test)."""
    from tunebook.predict import read_predictions

    path = Path(run_dir) / FOLDER / "variants" / _slug(name) / f"{split}.jsonl"
    if not path.is_file():
        raise TunebookError(f"{path} is missing: run 02_prove_the_baseline for this run folder first.")
    return read_predictions(path)


def load_classical(run_dir: str | Path) -> ClassicalModel | None:
    """The classical model 02 fitted, if the job has one."""
    import joblib

    path = Path(run_dir) / CLASSICAL_FILE
    return joblib.load(path) if path.is_file() else None


def tuned_decision(folder: str | Path) -> tuple[DecisionRule | None, ClassicalModel | None]:
    """The decision rule 04 fitted for the tuned model in a run folder (or a downloaded release, which has the same
    layout), and the classical model it mixes in, if it does."""
    path = Path(folder) / RULE_FILE
    if not path.is_file():
        return None, None
    rule = load_rule(path)
    if rule.mix_weight <= 0:
        return rule, None
    model = load_classical(folder)
    if model is None:
        raise TunebookError(f"{path} mixes in the classical model, but {Path(folder) / CLASSICAL_FILE} is missing.")
    return rule, model
