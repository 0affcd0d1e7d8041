"""The scikit-learn models behind the cheap baselines, fitted on the train split only: the retriever of each input's
nearest training examples (TF-IDF cosine) and the classical classifier over a fixed set of answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_union

from tunebook.dataset import stratum
from tunebook.errors import TunebookError
from tunebook.job import JobCard

CLASSICAL_C = (0.3, 1.0, 3.0, 10.0, 30.0)


def _text_features() -> object:
    """Word 1-2 grams and character 2-5 grams, TF-IDF weighted (sublinear term frequency)."""
    return make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    )


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
    y = train["target"].map(lambda t: stratum(card, t))
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
