"""The scikit-learn models behind the cheap baselines, fitted on the train split only: the retriever of each input's
nearest training examples (TF-IDF cosine) and the classical classifier over a fixed set of answers, stored as arrays
(never a pickle: loading a registry's version must not run code)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_union

from tunebook.card.schema import JobCard
from tunebook.data.splits import stratum
from tunebook.errors import TunebookError

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


# --- storage ---------------------------------------------------------------------------------------------------------
#
# A fitted classical model is a vocabulary and a few arrays: they are stored as a numpy .npz file read with
# allow_pickle=False (no object arrays, so no code runs when a registry's version is loaded) and rebuilt into the
# same scikit-learn objects. skops would also refuse code, but importing it walks every scikit-learn estimator and
# imports torch on the way: 1.5 s, and 0.3-0.6 s more per load, against milliseconds here
# (benchmarks/classical_format.py).

FORMAT = "tunebook-classical"
FORMAT_VERSION = 1
_VECTORIZER_SETTINGS = ("analyzer", "ngram_range", "sublinear_tf")
_MODEL_SETTINGS = ("C", "class_weight", "max_iter", "random_state")


def _refusal(path: Path, why: str) -> TunebookError:
    return TunebookError(
        f"{path} {why}. tunebook loads a classical model only from its own format (arrays, never a pickle: loading "
        "a pickled or joblib model can run code, and unpickling one from a shared registry would run someone "
        "else's code); re-run 02_prove_the_baseline (or release the run folder again) with this tunebook, which "
        "stores it that way."
    )


def _vectorizers(model: ClassicalModel) -> list[TfidfVectorizer]:
    union = model.pipeline.named_steps["features"]
    found = [transformer for _, transformer in union.transformer_list]
    reference = [transformer for _, transformer in _text_features().transformer_list]
    for fitted, fresh in zip(found, reference):
        own = {k: v for k, v in fitted.get_params().items() if k not in _VECTORIZER_SETTINGS}
        if own != {k: v for k, v in fresh.get_params().items() if k not in _VECTORIZER_SETTINGS}:
            raise TunebookError("this classical model's text features differ from tunebook's; it cannot be stored.")
    return found


def save_classical(model: ClassicalModel, path: str | Path) -> Path:
    """Store the classical model at ``path`` (an ``.npz`` file of arrays and its settings as JSON); return the path."""
    path = Path(path)
    vectorizers, regression = _vectorizers(model), model.pipeline.named_steps["model"]
    arrays: dict[str, np.ndarray] = {}
    for i, vectorizer in enumerate(vectorizers):
        terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
        arrays[f"terms_{i}"] = np.array(terms, dtype=str)
        arrays[f"idf_{i}"] = np.asarray(vectorizer.idf_, dtype=np.float64)
    arrays["coef"], arrays["intercept"] = regression.coef_, regression.intercept_
    arrays["classes"] = np.array(regression.classes_, dtype=str)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "choices": list(model.choices),
        "cv": model.cv,
        "features": [{k: vectorizer.get_params()[k] for k in _VECTORIZER_SETTINGS} for vectorizer in vectorizers],
        "model": {k: regression.get_params()[k] for k in _MODEL_SETTINGS},
    }
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_classical_file(path: str | Path) -> ClassicalModel:
    """Load a classical model that ``save_classical`` stored; anything else (a pickle, a joblib file, an array
    that only a pickle could hold) is refused without being run."""
    path = Path(path)
    if not path.is_file():
        raise TunebookError(f"no classical model at {path}.")
    if not zipfile.is_zipfile(path):  # an .npz is a zip; a pickle or joblib file is not, and is never opened as one
        raise _refusal(path, "is not a classical model stored by tunebook (it may be a pickle)")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise _refusal(path, f"is not a classical model stored by tunebook ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        found = f"{meta.get('format')!r} version {meta.get('version')!r}" if isinstance(meta, dict) else "no settings"
        raise _refusal(path, f"is not in this tunebook's classical format (found {found})")
    try:
        return _rebuild(meta, arrays)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise _refusal(path, f"is not a complete classical model ({type(error).__name__}: {error})") from None


def _rebuild(meta: dict, arrays: dict[str, np.ndarray]) -> ClassicalModel:
    """The scikit-learn objects a stored classical model's settings and arrays describe."""
    vectorizers = []
    for i, settings in enumerate(meta["features"]):
        vectorizer = TfidfVectorizer(**{**settings, "ngram_range": tuple(settings["ngram_range"])})
        vectorizer.vocabulary_ = {term: j for j, term in enumerate(arrays[f"terms_{i}"].tolist())}
        vectorizer.idf_ = arrays[f"idf_{i}"]
        vectorizers.append(vectorizer)
    regression = LogisticRegression(**meta["model"])
    regression.coef_, regression.intercept_ = arrays["coef"], arrays["intercept"]
    regression.classes_ = arrays["classes"].astype(object)
    regression.n_features_in_ = regression.coef_.shape[1]
    pipeline = Pipeline([("features", make_union(*vectorizers)), ("model", regression)])
    return ClassicalModel(pipeline, list(meta["choices"]), dict(meta["cv"]))
