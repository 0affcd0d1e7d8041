"""The model registry on MLflow: one registered model per job, each adapter a version, `challenger` and `champion` aliases.

By default tracking and registry live in one SQLite file in the workspace (``runs/mlflow.db``, artifacts in
``runs/mlartifacts``): nothing to start. ``MLFLOW_TRACKING_URI`` points a team at a shared MLflow server instead.
Reading it, and the store and its lock, are here; the writes that register, promote and roll back a version are in
``registration``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from tunebook.errors import TunebookError

CHALLENGER, CHAMPION = "challenger", "champion"
DB_FILE, ARTIFACTS_DIR = "mlflow.db", "mlartifacts"
TAG = "tunebook."  # prefix of the tags tunebook sets on runs and model versions


@dataclass
class Registry:
    """An MLflow tracking + registry store, the local artifact root (SQLite default only) and the write lock."""

    uri: str
    artifact_root: str | None = None
    lock_path: Path | None = None
    _client: object = field(default=None, repr=False)

    @property
    def client(self):
        """The MLflow client for this store."""
        if self._client is None:
            # deferred: MLflow takes seconds to import; only registry work loads it
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's write lock (a file lock next to a SQLite store; a server serialises its own writes)."""
        if self.lock_path is None:
            yield
            return
        try:
            with FileLock(str(self.lock_path), timeout=300):
                yield
        except Timeout as error:
            raise TunebookError(
                f"the registry {self.uri} stayed locked for 5 minutes ({self.lock_path}); "
                "another tunebook run is writing to it. Retry when it has finished."
            ) from error


def default_uri(workspace: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file ``mlflow.db`` in ``workspace``."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return env or f"sqlite:///{Path(workspace).resolve() / DB_FILE}"


def open_registry(uri: str = "", workspace: str | Path = "runs") -> Registry:
    """Open (and on first use create) the tracking store and registry at ``uri`` (default: see ``default_uri``)."""

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = uri or default_uri(workspace)
    registry = Registry(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
        registry.lock_path = db.with_name(db.name + ".lock")
        registry.artifact_root = (db.parent / ARTIFACTS_DIR).resolve().as_uri()
    with registry.locked():  # the first use creates the tables; two processes must not both migrate
        registry.client.search_experiments(max_results=1)
    return registry


def model_name(job: str) -> str:
    """The registered model of a job: the job card's name."""
    return job


def _no_such_version(error: Exception) -> bool:
    """MLflow's answer for an alias or version number the registered model does not have (or no such model)."""
    return _not_found(error) or "INVALID_PARAMETER_VALUE" in str(getattr(error, "error_code", ""))


def _not_found(error: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(error, "error_code", "")) or "not found" in str(error).lower()


def _version_by_alias(registry: Registry, job: str, alias: str):
    # deferred: as above: MLflow loads only for registry work
    from mlflow.exceptions import MlflowException

    try:
        return registry.client.get_model_version_by_alias(model_name(job), alias)
    except MlflowException as error:
        if _no_such_version(error):
            return None
        raise


def champion(registry: Registry, job: str):
    """The job's current champion model version, or None before the first release."""
    return _version_by_alias(registry, job, CHAMPION)


def aliases(registry: Registry, job: str) -> dict[str, str]:
    """Alias -> version number for the job's registered model ({} if the job has none yet)."""
    # deferred: as above: MLflow loads only for registry work
    from mlflow.exceptions import MlflowException

    try:
        return {a: str(v) for a, v in registry.client.get_registered_model(model_name(job)).aliases.items()}
    except MlflowException as error:
        if _not_found(error):
            return {}
        raise


def versions(registry: Registry, job: str) -> pd.DataFrame:
    """Every registered version of the job with its aliases, gate verdict, headline metric and origin."""
    found = registry.client.search_model_versions(f"name = '{model_name(job)}'")
    held = {}  # search results come without their aliases (MLflow 3.17), so they are read from the registered model
    for alias, number in aliases(registry, job).items():
        held.setdefault(number, []).append(alias)
    rows = []
    for mv in sorted(found, key=lambda v: int(v.version)):
        tags = mv.tags
        rows.append(
            {
                "version": int(mv.version),
                "aliases": ", ".join(sorted(held.get(str(mv.version), []))),
                "system": tags.get(TAG + "system_kind", "adapter"),  # versions before systems were all adapters
                "knowledge": tags.get(TAG + "knowledge_version", "")[:12],
                "gate": tags.get(TAG + "gate", ""),
                "failed_checks": tags.get(TAG + "gate_failed", ""),
                "primary": tags.get(TAG + "primary", ""),
                "value": tags.get(TAG + "primary_value", ""),
                "run_folder": tags.get(TAG + "run_dir", ""),
                "registered": time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000)),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "version",
            "aliases",
            "system",
            "knowledge",
            "gate",
            "failed_checks",
            "primary",
            "value",
            "run_folder",
            "registered",
        ],
    ).set_index("version")


def find_version(registry: Registry, job: str, **tags: str | None):
    """The job's model version whose tunebook tags equal ``tags`` (None: the version lacks that tag), if any."""
    for mv in registry.client.search_model_versions(f"name = '{model_name(job)}'"):
        if all(mv.tags.get(TAG + key) == value for key, value in tags.items()):
            return mv
    return None


def experiment_id(registry: Registry, job: str) -> str:
    name = f"tunebook/{job}"
    found = registry.client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return registry.client.create_experiment(
        name, artifact_location=f"{registry.artifact_root}/{job}" if registry.artifact_root else None
    )


def get_version(registry: Registry, job: str, version: str | int):
    """One registered version of the job; a clear error naming the versions that exist if it is not one of them."""
    # deferred: as above: MLflow loads only for registry work
    from mlflow.exceptions import MlflowException

    try:
        return registry.client.get_model_version(model_name(job), str(version))
    except MlflowException as error:
        if not _no_such_version(error):
            raise
        known = ", ".join(str(v) for v in versions(registry, job).index) or "none"
        raise TunebookError(
            f"'{job}' has no version {version} in {registry.uri} (registered versions: {known})."
        ) from None


def log_run(
    registry: Registry, job: str, run_name: str, metrics: dict[str, float], tags: dict[str, str], files: list[Path]
) -> str:
    """Log a finished tracking run in the job's experiment (a monitoring pass): metrics, tags and files."""
    # deferred: as above: MLflow loads only for registry work
    from mlflow.entities import Metric

    client = registry.client
    run_id = client.create_run(
        experiment_id(registry, job), run_name=run_name, tags={TAG + k: v for k, v in tags.items()}
    ).info.run_id
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()])
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def log_file(registry: Registry, run_id: str, path: str | Path, folder: str) -> None:
    """Add one more file to a finished tracking run's artifacts (e.g. the executed release notebook)."""
    registry.client.log_artifact(run_id, str(path), folder)


def download(registry: Registry, version, folder: str, destination: str | Path) -> Path:
    """Download artifact ``folder`` of the tracking run behind a model version into ``destination``."""
    # deferred: as above: MLflow loads only for registry work
    import mlflow.artifacts

    Path(destination).mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=folder, dst_path=str(destination), tracking_uri=registry.uri
        )
    )
