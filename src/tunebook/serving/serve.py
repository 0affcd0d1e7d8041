"""Using a released model without a notebook: the job's champion (or a chosen version) on a file of inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from tunebook.core.cache import cache_dir, move_into_place, staging_path
from tunebook.core.runfolder import MODEL_ARTIFACT, RunFolder, manifest_path
from tunebook.core.tables import save_predictions
from tunebook.data.examples import load_table
from tunebook.errors import TunebookError
from tunebook.registry.store import Registry, champion, download, get_version
from tunebook.serving.pyfunc import Answerer, refuse_pickled


def fetch_release(registry: Registry, job: str, version: str | int | None = None) -> tuple[str, RunFolder]:
    """Download (once; cached by tracking run) the job card, evaluation and model of the champion or ``version``."""
    chosen = _chosen(registry, job, version)
    return str(chosen.version), _fetch(registry, chosen)


def _chosen(registry: Registry, job: str, version: str | int | None):
    """The registered version asked for: ``version``, or the champion when None."""
    if version is not None:
        return get_version(registry, job, version)
    chosen = champion(registry, job)
    if chosen is None:
        raise TunebookError(
            f"job '{job}' has no champion in {registry.uri}: release one with 05_release first "
            "(or point MLFLOW_TRACKING_URI / --tracking-uri at the registry that has it)."
        )
    return chosen


def _fetch(registry: Registry, chosen) -> RunFolder:
    """The cached folder of a registered version, downloaded whole first if it is not there."""
    release = RunFolder(cache_dir() / "released" / chosen.run_id)
    if not _fetched(release, chosen):
        # Into a folder of this call's own, then renamed: two processes serving on an empty cache (two server
        # workers, two `tunebook predict`) never read a file the other is still writing.
        staged = RunFolder(staging_path(release.root))
        shutil.rmtree(staged.root, ignore_errors=True)  # left by a process that died with this number
        try:
            download(registry, chosen, staged.relative(staged.evaluation_dir), staged.root)
            download(registry, chosen, staged.relative(staged.job_card), staged.root)
            if _is_pyfunc(chosen):
                download(registry, chosen, MODEL_ARTIFACT, staged.root)
            else:  # released before the pyfunc model: the adapter folder is what answers
                download(registry, chosen, staged.relative(staged.adapter_dir), staged.root)
        except BaseException:
            shutil.rmtree(staged.root, ignore_errors=True)
            raise
        move_into_place(staged.root, release.root, replace=release.root.exists() and not _fetched(release, chosen))
    return release


def _is_pyfunc(version) -> bool:
    """Whether a registered version's source is the MLflow pyfunc model (versions before it point at the run)."""
    return version.source.rstrip("/").endswith("/" + MODEL_ARTIFACT)


def _fetched(release: RunFolder, version) -> bool:
    """Whether a cached release folder holds all that serving ``version`` reads."""
    answers = (
        (release.root / MODEL_ARTIFACT / "MLmodel").is_file()
        if _is_pyfunc(version)
        else manifest_path(release.adapter_dir).is_file()
    )
    return answers and release.job_card.is_file() and release.tuned_predictions.is_file()


def load_released(
    registry: Registry, job: str, version: str | int | None = None, base_model: str | None = None
) -> Answerer:
    """The champion (or ``version``) loaded to answer, through the MLflow pyfunc model it was registered as (a
    version released before tunebook registered one is loaded from its run folder the same way)."""
    chosen = _chosen(registry, job, version)
    release = _fetch(registry, chosen)
    if _is_pyfunc(chosen):
        # deferred: MLflow takes seconds to import; a release folder already fetched is loaded through it only here
        import mlflow.pyfunc

        refuse_pickled(release.root / MODEL_ARTIFACT, str(chosen.version))
        loaded = mlflow.pyfunc.load_model(
            str(release.root / MODEL_ARTIFACT), model_config={"base_model": base_model} if base_model else None
        )
        return loaded.get_raw_model()
    return Answerer(release, job, str(chosen.version), base_model)


def predict_file(
    registry: Registry,
    job: str,
    inputs: str | Path,
    output: str | Path,
    base_model: str = "bundled",
    version: str | int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every row of ``inputs`` with the released model and write JSONL to ``output`` (never over an existing file)."""
    output = Path(output)
    if output.exists():
        raise TunebookError(f"{output} already exists; predictions never overwrite a file. Choose another --output.")
    answerer = load_released(registry, job, version, base_model)
    answerer.batch_size = batch_size
    result = answerer.answer(load_table(inputs), source=str(inputs), progress=progress)
    save_predictions(result, output)
    return result


def send_traffic(
    answerer: Answerer, inputs: str | Path, log: str | Path, rows: int = 0, request_size: int = 8
) -> pd.DataFrame:
    """Answer the first ``rows`` (0: all) of a file of inputs through a loaded release in requests of
    ``request_size``, as a service would, appending every answer to the inference log ``log``."""
    card = answerer.card
    frame = load_table(inputs)
    frame = frame.head(rows) if rows else frame
    if card.data.id_column not in frame.columns:  # ids from the file's row numbers, not from each request's
        frame = frame.assign(**{card.data.id_column: [str(i) for i in range(1, len(frame) + 1)]})
    answerer.log = str(log)
    parts = [
        answerer.answer(frame.iloc[start : start + request_size], source=str(inputs))
        for start in range(0, len(frame), request_size)
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
