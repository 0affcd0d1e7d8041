"""The classical model is stored as arrays in tunebook's own .npz format and loaded without unpickling anything:
a pickle, a joblib file or an array that only a pickle could hold is refused, and its code never runs."""

from __future__ import annotations

import json
import pathlib
import pickle
import subprocess
import sys
import zipfile

import joblib
import numpy as np
import pandas as pd
import pytest
from conftest import write_job

from tunebook.card.schema import load_job_card
from tunebook.errors import TunebookError
from tunebook.modeling.classical import ClassicalModel, fit_classical, load_classical_file, save_classical

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
# Words and character n-grams the model never saw, an empty text, and text outside ASCII.
UNSEEN = [
    "refund my card please",
    "where is my parcel",
    "reset my password",
    "something else entirely",
    "zxqv wibble frobnicate",
    "",
    "mon colis n'est pas arrivé — où est-il ?",
]
REFUSED = "re-run 02_prove_the_baseline (or release the run folder again) with this tunebook"


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


class Payload:
    """An object that creates a file when it is unpickled (from inside an object array of an .npz)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def refusal(path: pathlib.Path) -> str:
    """The message of the TunebookError that loading ``path`` raises."""
    with pytest.raises(TunebookError) as caught:
        load_classical_file(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_round_trip_gives_identical_probabilities(model, tmp_path):
    path = save_classical(model, tmp_path / "deep" / "model.npz")
    assert path == tmp_path / "deep" / "model.npz" and path.is_file()
    assert list(tmp_path.rglob("*")) == [tmp_path / "deep", path]  # one file, no sidecar
    loaded = load_classical_file(path)
    np.testing.assert_array_equal(loaded.predict_proba(UNSEEN), model.predict_proba(UNSEEN))
    texts = train_frame()["text"].tolist()
    np.testing.assert_array_equal(loaded.predict_proba(texts), model.predict_proba(texts))
    assert loaded.choices == model.choices and loaded.cv == model.cv
    assert list(loaded.pipeline.classes_) == list(model.pipeline.classes_)


def test_the_file_holds_arrays_and_no_object(model, tmp_path):
    path = save_classical(model, tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    assert all(array.dtype != object for array in arrays.values())
    meta = json.loads(str(arrays["meta"]))
    assert meta["format"] == "tunebook-classical" and meta["choices"] == model.choices and meta["cv"] == model.cv


def test_a_tampered_pickle_is_refused_without_running(model, tmp_path):
    path = save_classical(model, tmp_path / "model.npz")
    marker = tmp_path / "ran"
    path.write_bytes(pickle.dumps(Tampered(marker)))
    message = refusal(path)
    assert "may be a pickle" in message and "can run code" in message and REFUSED in message
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the control: unpickling the same bytes does run code
    assert marker.exists()


def test_an_npz_with_an_object_array_is_refused_without_running(tmp_path):
    path, marker = tmp_path / "model.npz", tmp_path / "ran"
    payload = np.empty(1, dtype=object)
    payload[0] = Payload(str(marker))
    meta = np.array(json.dumps({"format": "tunebook-classical", "version": 1}))
    with path.open("wb") as handle:
        np.savez(handle, coef=payload, meta=meta)
    with np.load(path, allow_pickle=False) as stored, pytest.raises(ValueError):
        stored["coef"]  # what the loader meets: numpy refuses the array, and says so
    message = refusal(path)
    assert "not a classical model stored by tunebook" in message and REFUSED in message
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as stored:  # the control: allowing pickles would run its code
        stored["coef"]
    assert marker.exists()


def test_an_old_joblib_file_is_refused_with_the_fix(model, tmp_path):
    path = tmp_path / "model.npz"
    joblib.dump(model, path)
    message = refusal(path)
    assert "joblib" in message and "can run code" in message and REFUSED in message


def test_random_bytes_and_another_format_are_refused(model, tmp_path):
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(256))
    assert "not a classical model stored by tunebook" in refusal(noise)

    other = tmp_path / "other.npz"
    with np.load(save_classical(model, tmp_path / "model.npz"), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "format": "someone-elses-classical"}))
    np.savez_compressed(other, **arrays)
    message = refusal(other)
    assert "not in this tunebook's classical format" in message and "someone-elses-classical" in message

    plain = tmp_path / "plain.zip"  # a zip that is no .npz at all
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("other.txt", "hello")
    assert "not a classical model stored by tunebook" in refusal(plain)


def test_a_missing_model_is_named(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(TunebookError, match="no classical model") as caught:
        load_classical_file(path)
    assert str(path) in str(caught.value)


def test_the_file_is_small_and_loads_without_skops_or_torch(model, tmp_path):
    path = save_classical(model, tmp_path / "model.npz")
    assert path.stat().st_size < 300 * 1024
    code = (
        "import sys\n"
        "from tunebook.modeling.classical import load_classical_file\n"
        f"load_classical_file({str(path)!r})\n"
        "print(sorted(name for name in ('torch', 'skops') if name in sys.modules))\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


@pytest.mark.parametrize("meta", [[1], {"format": "tunebook-classical", "version": 1}])
def test_an_incomplete_stored_model_is_refused_not_crashed(meta, tmp_path):
    path = tmp_path / "model.npz"
    np.savez(path, meta=np.array(json.dumps(meta)))
    with pytest.raises(TunebookError, match="model.npz is not"):
        load_classical_file(path)
