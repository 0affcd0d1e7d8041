"""The classical model is stored with skops and loaded only when the file holds nothing that could run code."""

from __future__ import annotations

import json
import pathlib
import pickle
import zipfile

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io
from conftest import write_job
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from tunebook.classical import (
    TRUSTED_TYPES,
    ClassicalModel,
    classical_sidecar,
    fit_classical,
    load_classical_file,
    save_classical,
)
from tunebook.errors import TunebookError
from tunebook.job import load_job_card

TICKETS = {
    "billing": [
        "I was charged twice for my subscription this month",
        "please send me the invoice for my last order",
        "the refund for my returned jacket never arrived on my card",
        "why did my plan price go up without notice",
    ],
    "shipping": [
        "my parcel has been stuck in transit for a week",
        "the tracking number you sent does not work",
        "the courier left the box at the wrong address",
        "the delivery is five days late, where is it",
    ],
    "account": [
        "I cannot log in, the password reset email never comes",
        "please change the email address on my profile",
        "the two-factor code is rejected every time",
        "how do I close my account for good",
    ],
}
UNSEEN = ["refund my card please", "where is my parcel", "reset my password", "something else entirely"]


def train_frame(single_escalate: bool = False) -> pd.DataFrame:
    rows = [(label, text) for label, texts in TICKETS.items() for text in texts]
    if single_escalate:  # one example of a label: fit_classical skips cross-validation
        rows.append(("escalate", "my lawyer will hear about this fraud"))
    return pd.DataFrame(
        {
            "id": [f"T{i:03d}" for i in range(len(rows))],
            "text": [text for _, text in rows],
            "target": [label for label, _ in rows],
            "tags": [""] * len(rows),
        }
    )


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    return load_job_card(write_job(tmp_path_factory.mktemp("classical") / "job"))


@pytest.fixture(scope="module", params=[False, True], ids=["cross-validated", "single-example"])
def model(request, card) -> ClassicalModel:
    return fit_classical(card, train_frame(single_escalate=request.param), seed=0)


class Tampered:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class Marks:
    """An object that creates a file when skops would build it (skops calls __setstate__)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        pathlib.Path(state["marker"]).touch()
        self.__dict__.update(state)


def leave_marker(x):
    return x


def test_round_trip_gives_identical_probabilities(model, tmp_path):
    path = save_classical(model, tmp_path / "deep" / "model.skops")
    assert path == tmp_path / "deep" / "model.skops" and path.is_file()
    assert classical_sidecar(path) == tmp_path / "deep" / "model.json"
    assert skops.io.get_untrusted_types(file=path) == []
    loaded = load_classical_file(path)
    np.testing.assert_array_equal(loaded.predict_proba(UNSEEN), model.predict_proba(UNSEEN))
    assert loaded.choices == model.choices and loaded.cv == model.cv


def test_the_trusted_types_are_those_of_a_fitted_model(model, tmp_path):
    path = save_classical(model, tmp_path / "model.skops")

    def types(node) -> set[str]:
        if isinstance(node, dict):
            own = {f"{node['__module__']}.{node['__class__']}"} if "__class__" in node else set()
            return own.union(*(types(v) for v in node.values()))
        return set().union(*(types(v) for v in node)) if isinstance(node, list) else set()

    assert types(json.loads(zipfile.ZipFile(path).read("schema.json"))) == set(TRUSTED_TYPES)


def test_save_wants_a_skops_suffix(model, tmp_path):
    with pytest.raises(ValueError, match=r"\.skops"):
        save_classical(model, tmp_path / "model.joblib")


def test_a_tampered_pickle_is_refused_without_running(model, tmp_path):
    path = save_classical(model, tmp_path / "model.skops")
    marker = tmp_path / "ran"
    path.write_bytes(pickle.dumps(Tampered(marker)))
    with pytest.raises(TunebookError, match="not a skops file") as caught:
        load_classical_file(path)
    assert str(path) in str(caught.value) and "pickle" in str(caught.value)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the control: unpickling it does run code
    assert marker.exists()


@pytest.mark.parametrize("kind", ["function", "object"])
def test_a_skops_file_with_an_untrusted_type_is_refused(model, tmp_path, kind):
    path = save_classical(model, tmp_path / "model.skops")
    marker = tmp_path / "ran"
    if kind == "function":
        bad = FunctionTransformer(leave_marker)
        name = f"{leave_marker.__module__}.leave_marker"
    else:
        bad = Marks(str(marker))
        name = f"{Marks.__module__}.Marks"
    features, classifier = model.pipeline.steps
    skops.io.dump(Pipeline([features, ("hook", bad), classifier]), path)
    with pytest.raises(TunebookError, match="refused") as caught:
        load_classical_file(path)
    assert str(path) in str(caught.value) and name in str(caught.value) and "run code" in str(caught.value)
    assert not marker.exists()
    if kind == "object":  # the control: trusting the type would run its code
        skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
        assert marker.exists()


def test_an_old_joblib_file_is_refused_with_the_fix(model, tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    with pytest.raises(TunebookError) as caught:
        load_classical_file(path)
    message = str(caught.value)
    assert str(path) in message and "joblib" in message and "unpickling can run code" in message
    assert "re-run 02_prove_the_baseline (or release the run folder again) with this tunebook" in message


def test_random_bytes_and_a_zip_without_a_schema_are_not_skops_files(tmp_path):
    noise = tmp_path / "noise.skops"
    noise.write_bytes(np.random.default_rng(0).bytes(256))
    empty = tmp_path / "empty.skops"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("other.txt", "hello")
    for path in (noise, empty):
        with pytest.raises(TunebookError, match="not a skops file"):
            load_classical_file(path)


def test_a_missing_model_or_sidecar_is_named(model, tmp_path):
    with pytest.raises(TunebookError, match="no classical model"):
        load_classical_file(tmp_path / "absent.skops")
    path = save_classical(model, tmp_path / "model.skops")
    classical_sidecar(path).unlink()
    with pytest.raises(TunebookError, match="model.json is missing"):
        load_classical_file(path)
