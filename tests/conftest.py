"""Shared fixtures: a tiny randomly initialised Llama with the real SmolLM2 tokenizer, and tiny job data."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tunebook.modeling.models import bundled_gguf, compute_dtype
from tunebook.train.recipe import TrainConfig

# Models compute in float32 on a CPU and in bfloat16 on a GPU (8 significant bits instead of 24): comparisons of
# scores, losses and gradients take their tolerance from that, and stay tight on a CPU.
BFLOAT16 = compute_dtype() == torch.bfloat16


def tol(float32: float, bfloat16: float) -> float:
    """The absolute tolerance for this machine's compute dtype."""
    return bfloat16 if BFLOAT16 else float32


def assert_gradients_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Element-wise on float32; in bfloat16, within 5% of the gradient's norm (single elements are too noisy)."""
    if not BFLOAT16:
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-4)
    else:
        gap = (actual.float() - expected.float()).norm().item()
        assert gap <= 0.05 * expected.float().norm().item() + 1e-6, f"gradients differ by {gap:.3g}"


def assert_same_choices(actual, expected, tolerance: float) -> None:
    """Row-wise argmax of two score arrays agrees wherever the expected winner leads by more than the tolerance
    (in bfloat16, near-ties of a random model may flip)."""
    import numpy as np

    actual, expected = np.asarray(actual), np.asarray(expected)
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    np.testing.assert_array_equal(actual.argmax(1)[clear], expected.argmax(1)[clear])


# `make test` runs the suite in two pytest-xdist workers. The tests of a costly session fixture's files run on one
# worker, which builds it once; every other test goes wherever a worker is free. (xdist's own `--dist loadgroup`
# cannot group under pytest 9, which no longer lets a plugin rewrite a test's id.)
SHARED_FIXTURE_FILES = {
    "test_release.py": "released",
    "test_serve.py": "released",
    "test_monitor.py": "released",
    "test_systems.py": "systems",
    "test_workbook.py": "finished_run",
    "test_exercises.py": "finished_run",
    "test_browser.py": "finished_run",  # also in order: 01 reviews what 00 wrote
    "test_knowledge_pipeline.py": "rag_run",
    "test_export.py": "finished_run",
}


@pytest.hookimpl(optionalhook=True)  # without pytest-xdist the suite still runs, in one process
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """One work unit per shared fixture (its files' tests, in order) and one per other test, largest units first."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SHARED_FIXTURE_FILES.get(Path(nodeid.split("::")[0]).name, nodeid)

    return SharedFixtureScheduling(config, log)


# The tiers (`make test-fast` runs the first, unit and contract tests; `make test` every CPU tier): a test that
# executes notebooks through papermill is `workbook`, marked where it calls the runner itself and here where it uses
# one of these fixtures; test_browser.py is `browser`, test_real_model.py `slow`, a test that needs CUDA `gpu`.
WORKBOOK_FIXTURES = {"released", "finished_run", "systems", "rag_run", "prepared_run"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a whole-workbook fixture as ``workbook``."""
    for item in items:
        if WORKBOOK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.workbook)


def pytest_configure(config: pytest.Config) -> None:
    """Two workers on two cores: each gets its share of the cores, and so do the processes it starts."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        torch.set_num_threads(int(threads))


def free_port() -> int:
    """A local port nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(server, url: str, seconds: float) -> None:
    """Wait until the server process answers ``url``/ping; fail with its output if it dies or takes too long."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()[-3000:]
        time.sleep(0.5)


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "support_triage"
TRAFFIC = EXAMPLE / "traffic"


def fast(**changes) -> TrainConfig:
    """A short training configuration for the tiny model."""
    settings = {
        "quantization": "none",
        "max_steps": 6,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "lora_r": 8,
        "warmup_ratio": 0,
        "eval_steps": 2,
        "early_stopping_patience": 0,
        "general_mix": 0.0,
    }
    return TrainConfig(**{**settings, **changes})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Folder of a 2-layer Llama (random weights) saved with the real tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-model")
    gguf = bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    """The real SmolLM2 tokenizer, as saved with the tiny model."""
    from tunebook.modeling.models import load_tokenizer

    return load_tokenizer(tiny_model)


def write_job(
    folder: Path, rows: list[dict] | None = None, per_label: int = 6, example: str = "support_triage", **card_changes
) -> Path:
    """Write a small copy of an example job (card + data) into ``folder``; return the card path.

    ``per_label`` examples are taken per label (classification), per tool (tool selection), or
    ``6 * per_label`` in file order (extraction, drafting).
    """
    folder.mkdir(parents=True, exist_ok=True)
    source = EXAMPLE.parent / example
    card = yaml.safe_load((source / "job.yaml").read_text())
    data_name = card["data"]["path"]
    for extra in ("output_schema_file", "tools_file"):
        if extra in card:
            shutil.copy(source / card[extra], folder / card[extra])
    for documents in ("documents", "fresh_documents"):
        if card.get("knowledge", {}).get(documents):
            shutil.copytree(source / card["knowledge"][documents], folder / card["knowledge"][documents])
    if data_name.endswith(".csv"):
        if rows is None:
            frame = pd.read_csv(source / data_name, dtype=str, keep_default_na=False)
            frame = frame[frame["text"].str.strip() != ""].drop_duplicates("text", keep=False)
            rows = frame.groupby("label", group_keys=False).head(per_label).to_dict(orient="records")
        pd.DataFrame(rows).to_csv(folder / data_name, index=False)
    else:
        if rows is None:
            frame = pd.read_json(source / data_name, lines=True, dtype={"id": str})
            frame = frame[frame["text"].str.strip() != ""].drop_duplicates("text", keep=False)
            if card["task_kind"] == "tool_selection":
                frame = frame[frame["target"].map(lambda t: isinstance(t, dict))]
                rows = frame.groupby(frame["target"].map(lambda t: t["tool"]), group_keys=False).head(per_label)
            else:
                rows = frame.head(6 * per_label)
            rows = rows.to_dict(orient="records")
        pd.DataFrame(rows).to_json(folder / data_name, orient="records", lines=True, force_ascii=False)
    card.update(card_changes)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


@pytest.fixture()
def small_job(tmp_path) -> Path:
    """A job card over 6 examples per label of the bundled example."""
    return write_job(tmp_path / "job")


@pytest.fixture()
def example_copy(tmp_path) -> Path:
    """A writable copy of the bundled example folder."""
    target = tmp_path / "support_triage"
    shutil.copytree(EXAMPLE, target)
    return target


KEYWORDS = {
    "billing": ["invoice", "refund", "receipt", "overcharged"],
    "technical": ["crash", "bug", "freezes", "error"],
    "account": ["password", "login", "username", "2fa"],
    "shipping": ["parcel", "courier", "tracking", "delivery"],
    "feature_request": ["wish", "suggestion", "idea", "please add"],
    "escalate": ["lawyer", "fraud", "police", "lawsuit"],
}
FILLER = (
    "hello team thanks again today order app week please quick note since monday about my the this still help "
    "again customer question morning evening friday phone laptop kitchen blue green small large new old red "
    "weekend message reply waiting minutes hours soon later honestly really maybe"
).split()


def keyword_tickets(per_label: int, seed: int, start: int = 0) -> list[dict]:
    """Support-triage tickets a tiny model can learn: each label's keyword among random filler words."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(per_label * len(KEYWORDS)):
        label = list(KEYWORDS)[i % len(KEYWORDS)]
        words = rng.sample(FILLER, 7)
        words.append(rng.choice(KEYWORDS[label]))  # last, right before the answer: easy for a 2-layer model
        rows.append({"id": f"K{start + i:04d}", "text": " ".join(words), "label": label, "tags": ""})
    return rows


def keyword_job(folder: Path, shuffled: bool = False) -> tuple[Path, Path]:
    """The support-triage job card over learnable keyword tickets, and a frozen test file (true labels). With
    ``shuffled`` the training pool's labels are permuted: a deliberately worse adapter for the same job."""
    import random

    pool = keyword_tickets(24, seed=1)
    if shuffled:
        labels = [row["label"] for row in pool]
        random.Random(7).shuffle(labels)
        pool = [{**row, "label": label} for row, label in zip(pool, labels)]
    card = write_job(folder, rows=pool)
    test = folder / "test.csv"
    pd.DataFrame(keyword_tickets(6, seed=2, start=500)).to_csv(test, index=False)
    return card, test


RELEASE_PARAMETERS = {  # a full fine-tune of the tiny model learns the keyword tickets perfectly in 400 steps
    "METHOD": "full",
    "QUANTIZATION": "none",
    "LEARNING_RATE": 0.001,
    "BATCH_SIZE": 16,
    "MAX_STEPS": 400,
    "EVAL_STEPS": 400,
    "EARLY_STOPPING_PATIENCE": 0,
    "COMPARE_METHODS": "",
    "BOOTSTRAP_RESAMPLES": 200,
    "GENERAL_MIX": 0.0,
    # the classical baseline is perfect on keyword tickets, so the frame alone would stop after 02; the journey trains
    "FORCE_TRAINING": True,
    # a randomly initialised model has no general behaviour to protect; the probe's threshold is tested on its own
    "REGRESSION_MAX_INCREASE": 100.0,
}


@pytest.fixture(scope="session")
def released(tmp_path_factory, tiny_model):
    """Two releases of the support-triage job into one registry: a good adapter, then one trained on shuffled labels,
    both evaluated on the same frozen test file. Returns (runs folder, good run, shuffled run)."""
    from tunebook.workbook import runner as pipeline

    root = tmp_path_factory.mktemp("release")
    good_card, test = keyword_job(root / "good")
    bad_card, _ = keyword_job(root / "shuffled", shuffled=True)
    runs = root / "runs"
    found = []
    for name, card in (("good", good_card), ("shuffled", bad_card)):
        params = {**RELEASE_PARAMETERS, "JOB_CARD": str(card), "TEST_FILE": str(test), "BASE_MODEL": tiny_model}
        found.append(pipeline.run_workbook(params, runs, name, progress=False))
    return runs, found[0], found[1]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_model):
    """All seven notebooks executed on the tiny model and a small job (06 on 16 tickets of the bundled traffic), the
    way a learner catching up runs them: ``tunebook checkpoint 01``, then each notebook alone in its own call from the
    folder the steps before it left (what the checkpoint before that notebook restores). Returns (run folder, summary).
    """
    from tunebook.workbook import runner as pipeline
    from tunebook.workbook import workshop

    root = tmp_path_factory.mktemp("workbook")
    card = write_job(root / "job", per_label=5)
    params = {
        "JOB_CARD": str(card),
        "BASE_MODEL": tiny_model,
        "MAX_STEPS": 3,
        "BATCH_SIZE": 4,
        "LORA_R": 4,
        "COMPARE_STEPS": 1,
        "FORCE_TRAINING": True,
        "TRAFFIC_FILE": str(TRAFFIC / "in_distribution.csv"),  # the same six teams as the small job
        "TRAFFIC_ROWS": 16,
        "LABELS_FILE": str(TRAFFIC / "in_distribution_labels.csv"),
        # 05's export cell: every form where llama.cpp's bindings are installed (`make llama-cpp`)
        "EXPORT_FORMS": "merged,adapter,gguf,ollama" if importlib.util.find_spec("llama_cpp") else "merged,adapter",
    }  # the notebooks must all run, whatever the baselines reach on 6 test tickets
    workshop.build_checkpoint(pipeline.NOTEBOOKS[1], root / "runs" / "tiny", params, progress=False)
    for step in pipeline.NOTEBOOKS[1:]:
        found = pipeline.run_workbook(params, root / "runs", "tiny", (step,), progress=False, continue_run=True)
    return found
