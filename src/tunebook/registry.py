"""The model registry on MLflow: one registered model per job, each adapter a version, `challenger` and `champion` aliases.

By default tracking and registry live in one SQLite file in the workspace (``runs/mlflow.db``, artifacts in
``runs/mlartifacts``): nothing to start. ``MLFLOW_TRACKING_URI`` points a team at a shared MLflow server instead.
Every write that changes the registry happens under one lock and is undone if any part of it fails, so a failed run
leaves the registry as it was and two runs at once cannot interleave their changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tunebook.errors import TunebookError
from tunebook.runfolder import MODEL_CARD

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
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's write lock (a file lock next to a SQLite store; a server serialises its own writes)."""
        if self.lock_path is None:
            yield
            return
        from filelock import FileLock, Timeout

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
    import logging

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
                "gate": tags.get(TAG + "gate", ""),
                "failed_checks": tags.get(TAG + "gate_failed", ""),
                "primary": tags.get(TAG + "primary", ""),
                "value": tags.get(TAG + "primary_value", ""),
                "run_folder": tags.get(TAG + "run_dir", ""),
                "registered": time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000)),
            }
        )
    return pd.DataFrame(
        rows, columns=["version", "aliases", "gate", "failed_checks", "primary", "value", "run_folder", "registered"]
    ).set_index("version")


def find_version(registry: Registry, job: str, key: str, value: str):
    """The job's model version whose tunebook tag ``key`` equals ``value``, if any."""
    for mv in registry.client.search_model_versions(f"name = '{model_name(job)}'"):
        if mv.tags.get(TAG + key) == value:
            return mv
    return None


def _experiment_id(registry: Registry, job: str) -> str:
    name = f"tunebook/{job}"
    found = registry.client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return registry.client.create_experiment(
        name, artifact_location=f"{registry.artifact_root}/{job}" if registry.artifact_root else None
    )


def _flat(prefix: str, values: dict) -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(f"{prefix}{key}.", value))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def publish(
    registry: Registry,
    job: str,
    run_name: str,
    params: dict,
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[tuple[str, Path]],
    model_artifact: str,
    description: Callable[[str], str],
    promote: bool,
    expected_champion: str | None,
    datasets: dict[str, dict] | None = None,
    model_folder: Callable[[str, Path], Path] | None = None,
) -> dict:
    """Log a tracking run (params, metrics, artifacts), register its model as a new version with the `challenger`
    alias and, if ``promote``, make it `champion` too; all of it or, on any failure, none of it in the registry.

    ``artifacts`` lists (artifact folder, local file or folder); ``model_artifact`` is the folder that holds the model;
    ``model_folder(version, scratch)``, if given, writes the model for that version number into a new folder under
    ``scratch`` and returns it: it is logged as ``model_artifact`` once the version exists (a served model knows
    its own version);
    ``description(version)`` gives the version's description (its model card), logged as ``model_card.md`` too;
    ``datasets`` maps a context (train, val, test) to a dataset's name, digest, source and row count (MLflow inputs).
    ``expected_champion`` is the champion version the gate compared against (None: there was none); promotion is
    refused if another run changed the champion in the meantime. (One function: the registry lock, the tracking run and
    the undo on failure span every step.)
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    client = registry.client
    name = model_name(job)
    with registry.locked():
        run = client.create_run(
            _experiment_id(registry, job), run_name=run_name, tags={TAG + k: v for k, v in tags.items()}
        )
        run_id = run.info.run_id
        try:
            stamp = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items() if v is not None],
                params=[Param(k, str(v)[:6000]) for k, v in _flat("", params).items()],
            )
            if datasets:
                client.log_inputs(
                    run_id,
                    [
                        DatasetInput(
                            Dataset(
                                d["name"],
                                d["digest"],
                                "local",
                                json.dumps({"uri": d["source"]}),
                                profile=json.dumps({"num_rows": d["rows"]}),
                            ),
                            [InputTag("mlflow.data.context", context)],
                        )
                        for context, d in datasets.items()
                    ],
                )
            for folder, path in artifacts:
                if path.is_dir():
                    client.log_artifacts(run_id, str(path), folder)
                elif path.is_file():
                    client.log_artifact(run_id, str(path), folder or None)
            result = _register(
                registry,
                name,
                f"{run.info.artifact_uri}/{model_artifact}",
                run_id,
                tags,
                description,
                promote,
                expected_champion,
                lambda version: _log_model(registry, run_id, model_artifact, model_folder, version),
            )
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    return {**result, "run_id": run_id, "tracking_uri": registry.uri, "model": name}


def _register(
    registry: Registry,
    name: str,
    source: str,
    run_id: str,
    tags: dict,
    description: Callable[[str], str],
    promote: bool,
    expected_champion: str | None,
    log_model: Callable[[str], None],
) -> dict:
    """Create the version, log its model and move the aliases; undo every change if a step fails (caller holds the
    lock)."""
    from mlflow.exceptions import MlflowException

    client = registry.client
    created_model = False
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if not _not_found(error):
            raise
        client.create_registered_model(name, description=f"tunebook job '{name}': one version per trained adapter.")
        created_model = True
    before = aliases(registry, name)
    version = None
    try:
        version = client.create_model_version(
            name, source=source, run_id=run_id, tags={TAG + k: v for k, v in tags.items()}
        ).version
        log_model(str(version))
        text = description(str(version))
        client.log_text(run_id, text, MODEL_CARD)
        client.update_model_version(name, version, description=text)
        client.set_registered_model_alias(name, CHALLENGER, version)
        promoted = False
        if promote:
            _move_champion(registry, name, str(version), expected_champion)
            promoted = True
    except BaseException:
        _undo(registry, name, version, before, created_model)
        raise
    return {"version": str(version), "promoted": promoted, "previous_champion": before.get(CHAMPION)}


def _log_model(
    registry: Registry, run_id: str, folder: str, write: Callable[[str, Path], Path] | None, version: str
) -> None:
    """Write the version's model with ``write`` into a scratch folder and log it to the run as ``folder``."""
    if write is None:
        return
    with tempfile.TemporaryDirectory() as scratch:
        registry.client.log_artifacts(run_id, str(write(version, Path(scratch))), folder)


def _undo(registry: Registry, name: str, version: str | None, before: dict[str, str], created_model: bool) -> None:
    client = registry.client
    if created_model:
        client.delete_registered_model(name)
        return
    if version is not None:
        client.delete_model_version(name, version)
    for alias, number in before.items():
        client.set_registered_model_alias(name, alias, number)


def _move_champion(registry: Registry, name: str, version: str, expected: str | None) -> None:
    """Point `champion` at ``version`` if the champion is still ``expected``; remember the one it replaces."""
    current = aliases(registry, name).get(CHAMPION)
    if current != expected:
        raise TunebookError(
            f"the champion of '{name}' changed while this run was gated (expected {expected or 'none'}, now {current or 'none'}); "
            "nothing was promoted. Run 05_release again to gate against the new champion."
        )
    if current == version:
        raise TunebookError(f"version {version} of '{name}' is already the champion.")
    client = registry.client
    client.set_model_version_tag(name, version, TAG + "previous_champion", current or "")
    client.set_model_version_tag(name, version, TAG + "promoted_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    client.set_registered_model_alias(name, CHAMPION, version)


def promote(
    registry: Registry,
    job: str,
    version: str | int,
    force: bool = False,
    reason: str = "",
    require_shadow: bool = False,
) -> dict:
    """Make an already registered version the champion. A version that failed its gate needs ``force`` and a
    ``reason``; with ``require_shadow``, only a version whose shadow window raised no alert is promoted."""
    name, version = model_name(job), str(version)
    with registry.locked():
        mv = get_version(registry, job, version)
        shadow = mv.tags.get(TAG + "shadow")
        if require_shadow and shadow != "quiet":
            raise TunebookError(
                f"version {version} of '{name}' "
                + ("raised an alert in its shadow window" if shadow else "has not run in shadow")
                + f"; run it next to the champion first: tunebook shadow --job {job} --version {version} --log LOG."
            )
        overridden = mv.tags.get(TAG + "gate") != "passed"
        if overridden and not (force and reason.strip()):
            raise TunebookError(
                f"version {version} of '{name}' failed its gate ({mv.tags.get(TAG + 'gate_failed') or 'no gate recorded'}); "
                'promote it anyway only with force and a reason (tunebook promote --force --reason "..."), which are recorded.'
            )
        previous = aliases(registry, name).get(CHAMPION)
        _move_champion(registry, name, version, previous)
        if overridden:
            registry.client.set_model_version_tag(name, version, TAG + "forced", reason.strip())
    return {"model": name, "champion": version, "previous_champion": previous}


def rollback(registry: Registry, job: str) -> dict:
    """Move `champion` back to the version it replaced; the rolled-back version stays registered (as history)."""
    name = model_name(job)
    with registry.locked():
        current = champion(registry, name)
        if current is None:
            raise TunebookError(f"'{name}' has no champion in {registry.uri}; there is nothing to roll back.")
        previous = current.tags.get(TAG + "previous_champion", "")
        if not previous:
            raise TunebookError(
                f"version {current.version} of '{name}' was its first champion; there is no earlier one to roll back to."
            )
        client = registry.client
        client.set_model_version_tag(
            name, current.version, TAG + "rolled_back_at", time.strftime("%Y-%m-%dT%H:%M:%S%z")
        )
        client.set_registered_model_alias(name, CHAMPION, previous)
    return {"model": name, "champion": previous, "rolled_back": str(current.version)}


def get_version(registry: Registry, job: str, version: str | int):
    """One registered version of the job; a clear error naming the versions that exist if it is not one of them."""
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
    from mlflow.entities import Metric

    client = registry.client
    run_id = client.create_run(
        _experiment_id(registry, job), run_name=run_name, tags={TAG + k: v for k, v in tags.items()}
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
    import mlflow.artifacts

    Path(destination).mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=folder, dst_path=str(destination), tracking_uri=registry.uri
        )
    )
