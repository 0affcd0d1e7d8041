"""Writing to the registry: registering a release (its tracking run, artifacts, model version, MLflow model and
aliases), promotion and rollback. Every write happens under the registry's lock and is undone if any part of it
fails, so a failed run leaves the registry as it was and two runs at once cannot interleave their changes."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from tunebook.core.artifacts import Registered
from tunebook.core.runfolder import MODEL_CARD
from tunebook.errors import TunebookError
from tunebook.registry.store import (
    CHALLENGER,
    CHAMPION,
    TAG,
    Registry,
    _not_found,
    aliases,
    champion,
    experiment_id,
    get_version,
    model_name,
)


def _flat(prefix: str, values: dict) -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(f"{prefix}{key}.", value))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def register_version(
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
) -> Registered:
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
    # deferred: MLflow takes seconds to import; only registry work loads it
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    client = registry.client
    name = model_name(job)
    with registry.locked():
        run = client.create_run(
            experiment_id(registry, job), run_name=run_name, tags={TAG + k: v for k, v in tags.items()}
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
    return Registered(**result, run_id=run_id, tracking_uri=registry.uri, model=name)


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
) -> dict[str, str | bool | None]:
    """Create the version, log its model and move the aliases; undo every change if a step fails (caller holds the
    lock)."""
    # deferred: MLflow takes seconds to import; only registry work loads it
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


class ChampionChange(BaseModel):
    """A move of a job's `champion` alias: the registered model, the version now champion, and the one it replaced."""

    model: str
    champion: str
    replaced: str | None  # None: the job had no champion before


def promote(
    registry: Registry,
    job: str,
    version: str | int,
    force: bool = False,
    reason: str = "",
    require_shadow: bool = False,
) -> ChampionChange:
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
    return ChampionChange(model=name, champion=version, replaced=previous)


def rollback(registry: Registry, job: str) -> ChampionChange:
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
    return ChampionChange(model=name, champion=previous, replaced=str(current.version))
