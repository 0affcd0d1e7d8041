"""The MLflow registry: versions never overwritten, challenger/champion aliases, promotion, rollback, atomic writes."""

import multiprocessing
from pathlib import Path

import pytest

from tunebook.errors import TunebookError
from tunebook.registry import register as registration
from tunebook.registry import store as registry

JOB = "support_triage"


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return registry.open_registry(workspace=tmp_path / "runs")


def model_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(name.encode() * 100)
    return folder


def release(store, tmp_path, name, passed=True, promote=True, expected="auto"):
    """Publish one version the way release.publish_run does, with a gate verdict."""
    current = registry.aliases(store, JOB).get(registry.CHAMPION)
    return registration.register_version(
        store,
        JOB,
        name,
        {"train": {"learning_rate": 0.001}},
        {"test.macro_f1": 0.5},
        {"gate": "passed" if passed else "failed", "gate_failed": "" if passed else "must_never", "run_dir": name},
        [("adapter", model_folder(tmp_path, name))],
        "adapter",
        lambda version: f"# {JOB} · version {version}",
        promote and passed,
        current if expected == "auto" else expected,
    )


def test_default_store_is_a_sqlite_file_in_the_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = registry.open_registry(workspace=tmp_path / "runs")
    assert store.uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" and (tmp_path / "runs" / "mlflow.db").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'team.db'}")
    assert registry.open_registry(workspace=tmp_path / "runs").uri.endswith("team.db")


def test_first_release_becomes_champion_and_later_ones_challenger_until_promoted(store, tmp_path):
    assert registry.champion(store, JOB) is None and registry.versions(store, JOB).empty
    first = release(store, tmp_path, "run-1")
    assert (first.version, first.promoted, first.previous_champion, first.model) == (
        "1",
        True,
        None,
        registry.model_name(JOB),
    )
    second = release(store, tmp_path, "run-2", passed=False)
    assert second.version == "2" and not second.promoted
    assert registry.aliases(store, JOB) == {"champion": "1", "challenger": "2"}
    table = registry.versions(store, JOB)
    assert (
        table.loc[2, "gate"] == "failed"
        and table.loc[2, "failed_checks"] == "must_never"
        and table.loc[1, "aliases"] == "champion"
    )
    version = registry.get_version(store, JOB, 1)
    assert version.description == f"# {JOB} · version 1"
    downloaded = registry.download(store, version, "adapter", tmp_path / "dl")
    assert (downloaded / "adapter_model.safetensors").read_bytes() == b"run-1" * 100
    run = store.client.get_run(version.run_id)
    assert (
        run.info.status == "FINISHED"
        and run.data.params["train.learning_rate"] == "0.001"
        and run.data.metrics["test.macro_f1"] == 0.5
    )


def test_a_version_that_failed_its_gate_is_promoted_only_with_force_and_a_reason(store, tmp_path):
    release(store, tmp_path, "run-1")
    release(store, tmp_path, "run-2", passed=False)
    with pytest.raises(TunebookError, match="failed its gate \\(must_never\\)"):
        registration.promote(store, JOB, 2)
    with pytest.raises(TunebookError, match="reason"):
        registration.promote(store, JOB, 2, force=True)
    done = registration.promote(store, JOB, 2, force=True, reason="hotfix approved by the support lead")
    assert done == registration.ChampionChange(model=JOB, champion="2", replaced="1")
    assert registry.get_version(store, JOB, 2).tags["tunebook.forced"] == "hotfix approved by the support lead"
    with pytest.raises(TunebookError, match="no version 7.*versions: 1, 2"):
        registration.promote(store, JOB, 7)


def test_rollback_restores_the_earlier_champion_in_one_call(store, tmp_path):
    release(store, tmp_path, "run-1")
    release(store, tmp_path, "run-2")
    release(store, tmp_path, "run-3")
    assert str(registry.champion(store, JOB).version) == "3"
    assert registration.rollback(store, JOB) == registration.ChampionChange(model=JOB, champion="2", replaced="3")
    assert str(registry.champion(store, JOB).version) == "2"
    assert registration.rollback(store, JOB).champion == "1"
    with pytest.raises(TunebookError, match="first champion"):
        registration.rollback(store, JOB)
    assert len(registry.versions(store, JOB)) == 3  # rolled-back versions stay registered


def test_rollback_without_a_champion_says_so(store):
    with pytest.raises(TunebookError, match="no champion"):
        registration.rollback(store, JOB)


def test_promotion_is_refused_when_the_champion_changed_after_the_gate(store, tmp_path):
    release(store, tmp_path, "run-1")
    with pytest.raises(TunebookError, match="changed while this run was gated"):
        release(
            store, tmp_path, "run-2", expected=None
        )  # gated as a first release, but run-1 became champion meanwhile
    assert (
        registry.aliases(store, JOB) == {"champion": "1", "challenger": "1"}
        and len(registry.versions(store, JOB)) == 1
    )


def test_a_failure_midway_leaves_the_registry_unchanged(store, tmp_path, monkeypatch):
    release(store, tmp_path, "run-1")
    release(store, tmp_path, "run-2", passed=False)
    before = (registry.aliases(store, JOB), registry.versions(store, JOB).to_dict())
    original = type(store.client).set_registered_model_alias

    def broken(self, name, alias, version):
        if alias == registry.CHAMPION:
            raise OSError("disk full")
        return original(self, name, alias, version)

    monkeypatch.setattr(type(store.client), "set_registered_model_alias", broken)
    with pytest.raises(OSError, match="disk full"):
        release(store, tmp_path, "run-3")  # fails after the version was created and the challenger alias moved
    monkeypatch.undo()
    assert (registry.aliases(store, JOB), registry.versions(store, JOB).to_dict()) == before
    failed = store.client.search_runs(
        [store.client.get_experiment_by_name(f"tunebook/{JOB}").experiment_id], "attributes.run_name = 'run-3'"
    )
    assert [r.info.status for r in failed] == ["FAILED"]


def test_a_failing_first_release_leaves_no_registered_model(store, tmp_path):
    with pytest.raises(ZeroDivisionError):
        registration.register_version(
            store,
            JOB,
            "run-1",
            {},
            {},
            {},
            [("adapter", model_folder(tmp_path, "run-1"))],
            "adapter",
            lambda version: str(1 / 0),
            True,
            None,
        )
    assert registry.aliases(store, JOB) == {} and store.client.search_registered_models() == []


def _release_many(workspace: str, tmp: str, worker: int, count: int) -> list[str]:
    store = registry.open_registry(workspace=workspace)
    return [release(store, Path(tmp), f"w{worker}-{i}", promote=False).version for i in range(count)]


def test_two_runs_at_once_do_not_corrupt_the_registry(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / "runs"
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = pool.starmap(_release_many, [(str(workspace), str(tmp_path / f"w{w}"), w, 4) for w in range(2)])
    numbers = sorted(int(v) for found in results for v in found)
    assert numbers == list(range(1, 9))
    store = registry.open_registry(workspace=workspace)
    table = registry.versions(store, JOB)
    assert sorted(table["run_folder"]) == sorted(f"w{w}-{i}" for w in range(2) for i in range(4))
    for number, row in table.iterrows():  # every version's artifacts are its own
        adapter = registry.download(
            store, registry.get_version(store, JOB, number), "adapter", tmp_path / "dl" / str(number)
        )
        assert (adapter / "adapter_model.safetensors").read_bytes() == row["run_folder"].encode() * 100


def test_a_knowledge_update_of_a_released_adapter_is_a_new_release_and_a_repeat_is_refused(store, tmp_path):
    """A hybrid job's knowledge-only release keeps the adapter: the same weights with new documents must register."""
    from types import SimpleNamespace

    from tunebook.core.artifacts import System
    from tunebook.core.runfolder import RunFolder
    from tunebook.release import publish

    run = RunFolder(tmp_path / "run")
    run.adapter_dir.mkdir(parents=True)
    (run.adapter_dir / "adapter_model.safetensors").write_bytes(b"the hybrid adapter's weights")
    docs_1 = {"version": "docs-1", "retriever": "dense", "k": 3}
    system = System(kind="adapter", variant="tuned", needs_language_model=True, trained=True, knowledge=docs_1)
    identity = publish.release_identity(run, system)
    assert identity["knowledge_version"] == "docs-1" and len(identity["adapter_sha256"]) == 64
    tags = {"gate": "passed", "gate_failed": "", "run_dir": "run", **identity}
    registration.register_version(
        store, JOB, "run", {}, {}, tags, [("adapter", run.adapter_dir)], "adapter", lambda v: "", False, None
    )
    job = SimpleNamespace(name=JOB)
    with pytest.raises(TunebookError, match="adapter with these documents is already version 1"):
        publish.refuse_released(store, job, run, system)
    publish.refuse_released(store, job, run, system.model_copy(update={"knowledge": {**docs_1, "version": "docs-2"}}))
    publish.refuse_released(store, job, run, system.model_copy(update={"knowledge": None}))


def test_a_release_hashes_its_weights_once_and_checks_again_with_that_identity(store, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tunebook.core.artifacts import System
    from tunebook.core.runfolder import RunFolder
    from tunebook.release import publish

    run = RunFolder(tmp_path / "run")
    run.adapter_dir.mkdir(parents=True)
    (run.adapter_dir / "adapter_model.safetensors").write_bytes(b"weights")
    system = System(kind="adapter", variant="tuned", needs_language_model=True, trained=True)
    job = SimpleNamespace(name=JOB)
    identity = publish.refuse_released(store, job, run, system)
    assert identity == publish.release_identity(run, system)

    def hashed_again(*_):
        raise AssertionError("the weights were hashed again")

    monkeypatch.setattr(publish, "release_identity", hashed_again)
    assert publish.refuse_released(store, job, run, system, identity) == identity
