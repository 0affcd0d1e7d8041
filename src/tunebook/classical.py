"""The scikit-learn models behind the cheap baselines, fitted on the train split only: the retriever of each input's
nearest training examples (TF-IDF cosine) and the classical classifier over a fixed set of answers, stored with
skops (never a pickle: loading a registry's version must not run code)."""

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


# --- storage ---------------------------------------------------------------------------------------------------------

# Every type a fitted classical model's skops file holds (whichever branch of fit_classical fitted it), read from the
# file's schema. skops 0.16 trusts all of them by default, so get_untrusted_types reports none; listing them keeps such
# a file loadable should a later skops trust less by default, and nothing else is ever trusted.
TRUSTED_TYPES = (
    "builtins.dict",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
    "numpy.float64",
    "numpy.ndarray",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.pipeline.Pipeline",
)

# What a file that is not a skops file raises when skops opens it (a pickle is no zip; a zip may lack the schema).
_NOT_SKOPS = (zipfile.BadZipFile, KeyError, ValueError, TypeError, NotImplementedError)


def classical_sidecar(path: str | Path) -> Path:
    """The JSON file next to a stored classical model that holds its choices and cross-validation figures."""
    return Path(path).with_suffix(".json")


def save_classical(model: ClassicalModel, path: str | Path) -> Path:
    """Store the classical model at ``path`` (a ``.skops`` file) and its choices and cv beside it; return the path."""
    import skops.io  # deferred: importing skops costs about 1.5 s (it imports every scikit-learn estimator)

    path = Path(path)
    if path.suffix != ".skops":
        raise ValueError(f"a classical model is stored in a .skops file, not {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # deflated: the vocabularies go into the file's JSON schema (16 MB for the bundled example's tickets; 0.7 MB so)
    skops.io.dump(model.pipeline, path, compression=zipfile.ZIP_DEFLATED)
    sidecar = {"choices": list(model.choices), "cv": model.cv}
    classical_sidecar(path).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return path


def _refused(path: Path, unexpected: list[str]) -> TunebookError:
    """The error for a skops file that holds types a classical model never contains."""
    return TunebookError(
        f"{path} was refused: it holds types a classical model never contains ({', '.join(unexpected)}), and loading "
        "it could run code. Re-run 02_prove_the_baseline (or release the run folder again) with this tunebook to "
        "store a clean one."
    )


def load_classical_file(path: str | Path) -> ClassicalModel:
    """Load a classical model that save_classical stored, refusing any file whose loading could run code."""
    import skops.io  # deferred: importing skops costs about 1.5 s (it imports every scikit-learn estimator)
    from skops.io.exceptions import UntrustedTypesFoundException

    path = Path(path)
    if not path.is_file():
        raise TunebookError(f"no classical model at {path}.")
    not_skops = TunebookError(
        f"{path} is not a skops file. tunebook no longer loads pickled (joblib) classical models, because unpickling "
        "can run code; re-run 02_prove_the_baseline (or release the run folder again) with this tunebook, which "
        "stores it with skops."
    )
    if not zipfile.is_zipfile(path) or "schema.json" not in zipfile.ZipFile(path).namelist():
        raise not_skops  # a skops file is a zip with a schema; a pickle is not, and is never opened as one
    sidecar = classical_sidecar(path)
    if not sidecar.is_file():
        raise TunebookError(
            f"{sidecar} is missing: it holds the choices and cross-validation figures of the classical model {path}, "
            "which save_classical writes together. Re-run 02_prove_the_baseline (or release the run folder again)."
        )
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        choices, cv = list(meta["choices"]), dict(meta["cv"])
    except (ValueError, KeyError, TypeError) as error:
        raise TunebookError(f"{sidecar} is not the choices and cv of a classical model: {error}") from error
    try:  # skops checks every type in the file's schema before it builds anything (a second pass would cost 0.3 s)
        pipeline = skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as error:
        raise _refused(path, sorted(set(skops.io.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))) from error
    except _NOT_SKOPS as error:
        raise not_skops from error
    if not isinstance(pipeline, Pipeline):
        raise TunebookError(f"{path} holds a {type(pipeline).__name__}, not a classical model's pipeline.")
    return ClassicalModel(pipeline, choices, cv)
