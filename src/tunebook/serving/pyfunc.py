"""A released version as an MLflow pyfunc model: what ``mlflow.pyfunc.load_model("models:/<job>@champion")``,
``mlflow models serve`` and ``tunebook predict`` all run, answering exactly as the version was evaluated."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from tunebook.card.schema import JobCard
from tunebook.core.runfolder import RELEASE_ARTIFACT, RunFolder
from tunebook.errors import DataError, ModelNotFoundError, TunebookError
from tunebook.modeling.system import json_answers, load_system, read_system
from tunebook.serving import inference_log

# The module MLflow records in every released version's MLmodel and imports to load it. It stays this name whatever the
# package's layout (``tunebook/pyfunc.py`` hands over to ``_load_pyfunc`` here), so versions already registered load.
LOADER_MODULE = "tunebook.pyfunc"
BASE_MODEL_ENV = "TUNEBOOK_BASE_MODEL"  # where the serving machine keeps the base model, if not as at release


def local_base_model(name_or_path: str) -> str:
    """The base model as a folder on this machine: bundled, a local folder, or a hub id already in the local cache
    (never downloaded: a service must not fetch weights behind its operator's back)."""
    # deferred: torch loads only for a system with a language model
    from tunebook.modeling.models import resolve_base_model

    resolved = resolve_base_model(name_or_path)
    if Path(resolved).is_dir():
        return resolved
    from huggingface_hub import snapshot_download  # deferred: only a hub id reaches here

    try:
        return snapshot_download(resolved, local_files_only=True)
    except Exception:
        raise ModelNotFoundError(
            f"base model '{name_or_path}' is not on this machine and a served model never downloads one. Put it in "
            f"the local Hugging Face cache, or set {BASE_MODEL_ENV} to a folder holding it."
        ) from None


def request_frame(frame: pd.DataFrame, card: JobCard, source: str = "the request") -> pd.DataFrame:
    """The inputs to answer from a table: the card's text column (or ``text``) and the id column if there is one,
    else row numbers; a missing text column or an empty text is refused, naming the rows."""
    column = next((c for c in (card.data.text_column, "text") if c in frame.columns), None)
    if column is None:
        raise DataError(
            f"{source}: no '{card.data.text_column}' column to predict from "
            f"(columns: {', '.join(map(str, frame.columns))})."
        )
    ids = (
        frame[card.data.id_column].astype(str)
        if card.data.id_column in frame.columns
        else pd.Series(range(1, len(frame) + 1)).astype(str)
    )
    texts = frame[column].fillna("").astype(str)
    empty = [i + 1 for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise DataError(
            f"{source}: rows {', '.join(map(str, empty[:10]))} have an empty '{column}'; fill or remove them."
        )
    return pd.DataFrame({"id": ids.to_numpy(), "text": texts.to_numpy(), "target": "", "tags": ""})


class Answerer:
    """A released version loaded to answer: its system (the trained model on its checked base, a prompted base model,
    or the classical model, with its decision rule), and where it logs what it answers."""

    def __init__(self, release: RunFolder, job: str, version: str, base_model: str | None, batch_size: int = 8):
        self.card = release.read_job_card()
        self.job, self.version, self.batch_size = job, str(version), batch_size
        needs_model = read_system(release).needs_language_model
        self.system = load_system(release, local_base_model(base_model or "bundled") if needs_model else None)
        self.log = os.environ.get(inference_log.LOG_ENV) or None
        self.keep_text = os.environ.get(inference_log.TEXT_ENV, "full")

    def answer(self, frame: pd.DataFrame, source: str = "the request", progress: bool = False) -> pd.DataFrame:
        """One answer per row of ``frame``: id, model_version, prediction (a JSON object for extraction and tool
        calls), for fixed answers the confidence and the probability of each, and for a system answering from
        documents the ids of the passages it was given and the best one's score; appended to the inference log when
        one is set."""
        examples = request_frame(frame, self.card, source)
        start = time.perf_counter()
        result = self.system.answer(examples, self.batch_size, progress)
        latency_ms = (time.perf_counter() - start) * 1000 / max(1, len(examples))
        # the passages' ids stay in the answer (what it rests on); their text does not
        result = result.drop(columns=[c for c in ("target", "tags", "text", "context") if c in result])
        result.insert(1, "model_version", int(self.version) if self.version.isdigit() else self.version)
        if self.log:
            knowledge = (self.system.spec.knowledge or {}).get("version")
            records = inference_log.log_records(
                self.job, self.version, result, examples["text"].tolist(), latency_ms, self.keep_text, knowledge
            )
            inference_log.append(self.log, records)
        result["prediction"] = json_answers(self.card, result["prediction"])
        return result


class ReleasedModel:
    """The pyfunc flavour of a released version, built by MLflow through ``_load_pyfunc`` of this installed module
    (the version holds data only: no pickle, no code). Its model config names the job, the version and the base
    model it was released with; ``model_config={"base_model": ...}`` at load, or ``TUNEBOOK_BASE_MODEL``, points at
    the base model on another machine, whose weights must hash the same."""

    def __init__(self, release: RunFolder, config: dict):
        # a base model named at load time, else this machine's setting, else the one the version was released with
        base_model = config.get("base_model") or os.environ.get(BASE_MODEL_ENV) or config.get("released_base_model")
        self.answerer = Answerer(release, config["job"], config["version"], base_model, config.get("batch_size", 8))

    def get_raw_model(self) -> Answerer:
        """What ``PyFuncModel.get_raw_model()`` returns: the ``Answerer``."""
        return self.answerer

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Answer every row of the request (a ``text`` column, or the card's, and optionally an id column); a bad
        request raises MLflow's own error for bad input, which its server answers with HTTP 400 and no stack trace."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        try:
            return self.answerer.answer(model_input)
        except DataError as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> ReleasedModel:
    """MLflow's entry point for the ``loader_module`` flavour: the released version whose data is ``data_path``."""
    return ReleasedModel(RunFolder(Path(data_path)), model_config or {})


def refuse_pickled(model_folder: Path, version: str) -> None:
    """Refuse an MLflow model folder whose pyfunc flavour is a pickled python model (releases before this tunebook):
    loading it would run code taken from the registry."""
    meta = yaml.safe_load((model_folder / "MLmodel").read_text(encoding="utf-8")) or {}
    flavour = (meta.get("flavors") or {}).get("python_function") or {}
    if flavour.get("loader_module") != LOADER_MODULE:
        raise TunebookError(
            f"version {version} in {model_folder} was released by an older tunebook as a pickled MLflow python model "
            "(and a pickled classical model where it mixes one in); loading it would run code taken from the "
            "registry, so tunebook refuses it. Release its run folder again with this tunebook (04_evaluate and "
            "05_release on a copy of the run folder), which stores data only."
        )


def save_model(run: RunFolder, destination: str | Path, job: str, version: str, base_model: str) -> Path:
    """Write ``run``'s released model as an MLflow pyfunc model folder at ``destination``: the job card, the system
    (its description, decision rule, classical model and worked examples) and, for a trained system, its weights and
    manifest; nothing else of the run."""
    destination = Path(destination)
    if destination.exists():
        raise TunebookError(f"{destination} exists; an MLflow model folder is written once. Choose another folder.")
    staging = RunFolder(Path(tempfile.mkdtemp()) / RELEASE_ARTIFACT)
    try:
        shutil.copytree(run.system_dir, staging.system_dir)
        if read_system(run).trained:
            shutil.copytree(run.adapter_dir, staging.adapter_dir, ignore=shutil.ignore_patterns("checkpoint*"))
        shutil.copy2(run.job_card, staging.job_card)
        mlflow.pyfunc.save_model(
            str(destination),
            loader_module=LOADER_MODULE,  # MLflow imports this installed module to load it: the version is data only
            data_path=str(staging.root),
            # "base_model" is empty: a key MLflow lets a loader set (model_config={"base_model": ...})
            model_config={"job": job, "version": str(version), "released_base_model": base_model, "base_model": ""},
            pip_requirements=_requirements(),
        )
    finally:
        shutil.rmtree(staging.root.parent, ignore_errors=True)
    return destination


def _requirements() -> list[str]:
    """The packages the served model imports, pinned to this machine's versions (nothing is inferred by loading)."""
    pinned = []
    packages = (
        "tunebook",
        "mlflow",
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "scikit-learn",
        "pandas",
        "pydantic",
    )
    for package in packages:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pinned
