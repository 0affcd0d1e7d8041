"""The help-centre example through the workbook on the tiny model: 01 reads and versions the documents, 02 measures
the retrievers on validation and answers from retrieved passages, and that RAG system is evaluated, asked again
after the documents change (the freshness test) and answers with the passages it used."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLE, write_job

from tunebook.card.schema import load_job_card
from tunebook.core.runfolder import RunFolder
from tunebook.define.approach import decide_approach
from tunebook.errors import KnowledgeError, TunebookError
from tunebook.evaluate import step as evaluation
from tunebook.knowledge.passages import load_knowledge
from tunebook.modeling import system
from tunebook.workbook import runner as pipeline

HELP_CENTRE = EXAMPLE.parent / "help_centre"


def test_the_help_centre_card_asks_for_the_hybrid_stack():
    decision = decide_approach(load_job_card(HELP_CENTRE / "job.yaml"))
    assert decision.approach == "hybrid"


@pytest.fixture(scope="module")
def rag_run(tmp_path_factory, tiny_model):
    """The help-centre example (a few questions) after 00, 01 and 02."""
    root = tmp_path_factory.mktemp("help_centre")
    card = write_job(root / "job", per_label=5, example="help_centre")
    run_dir, _ = pipeline.run_workbook(
        {"JOB_CARD": str(card), "BASE_MODEL": tiny_model, "BOOTSTRAP_RESAMPLES": 50, "K_SHOTS": 1},
        root / "runs",
        "rag",
        steps=pipeline.NOTEBOOKS[:3],
        progress=False,
    )
    return RunFolder(run_dir)


def test_01_versions_both_document_sets_and_02_measures_retrieval_on_validation(rag_run):
    version = rag_run.read_dataset_version()
    knowledge, fresh = load_knowledge(rag_run.knowledge_dir), load_knowledge(rag_run.fresh_knowledge_dir)
    assert version.knowledge.version == knowledge.version and version.fresh_knowledge.version == fresh.version
    assert knowledge.version != fresh.version
    assert version.knowledge.articles == len(knowledge.articles) > 50
    results = rag_run.read_results("02_prove_the_baseline")
    table = results.retrieval["table"]
    assert results.retrieval["chosen"] in table and "bm25" in table
    assert all(0 <= row["recall@3"] <= 1 and 0 <= row["mrr"] <= 1 for row in table.values())
    assert "rag" in results.variants  # the base model answering from retrieved passages
    assert "Layers:" in results.verdict


def test_the_rag_system_answers_with_the_passages_it_used_and_takes_a_new_knowledge_version(rag_run, tiny_model):
    system.adopt_variant(rag_run, "rag", "chosen for this test")
    loaded = system.load_system(rag_run, tiny_model)
    assert (
        loaded.spec.kind == "rag" and loaded.spec.knowledge["version"] == load_knowledge(rag_run.knowledge_dir).version
    )
    test = rag_run.read_splits()["test"]
    answers = loaded.answer(test)
    assert all(isinstance(ids, list) and len(ids) <= 3 for ids in answers["retrieved"])
    assert answers["context"].str.len().gt(0).any()
    fresh = load_knowledge(rag_run.fresh_knowledge_dir)
    updated = loaded.with_knowledge(fresh)
    assert updated.spec.knowledge["version"] == fresh.version and loaded.spec.knowledge["version"] != fresh.version
    later = updated.answer(test)
    removed = set(load_knowledge(rag_run.knowledge_dir).articles) - set(fresh.articles)
    assert not any(i.split("#")[0] in removed for ids in later["retrieved"] for i in ids)

    evaluated = evaluation.evaluate_run(
        rag_run, loaded, evaluation.EvaluateSettings(bootstrap_resamples=50, train_sample=0)
    )
    assert {"knowledge_accuracy", "fact_accuracy", "groundedness", "citation_validity", "abstention"} <= set(
        evaluated.scores
    )
    table = evaluated.freshness
    assert table is not None and set(table.index) == {"prompting", "baseline", "tuned"}
    assert table.loc["tuned", "answers from"] == "passages"
    assert {"stale_fact_rate", "fresh_fact_accuracy", "removed_abstention"} <= set(table.columns)


@pytest.mark.workbook
def test_a_card_whose_documents_folder_is_empty_stops_in_01_before_anything_is_written(tmp_path, tiny_model):
    card = write_job(tmp_path / "job", per_label=2, example="help_centre")
    empty = tmp_path / "job" / "docs" / "v1"
    for path in sorted(empty.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(Exception) as error:
        pipeline.run_workbook(
            {"JOB_CARD": str(card), "BASE_MODEL": tiny_model},
            tmp_path / "runs",
            "empty",
            steps=pipeline.NOTEBOOKS[:2],
            progress=False,
        )
    assert "no documents" in str(error.value) or isinstance(error.value, KnowledgeError)
    run = RunFolder(tmp_path / "runs" / "empty")
    assert not run.dataset_version.exists() and not run.knowledge_dir.exists()


def test_hybrid_training_quotes_passages_and_04_compares_it_with_the_document_blind_adapter(
    rag_run, tiny_model, tmp_path
):
    import shutil

    from tunebook.modeling.prompts import render_text
    from tunebook.train import step as train
    from tunebook.train.raft import raft_frame

    run = RunFolder(tmp_path / "run")
    shutil.copytree(rag_run.root, run.root)
    shutil.rmtree(run.system_dir, ignore_errors=True)
    result = train.train_run_folder(
        run.root, {"BASE_MODEL": tiny_model, "MAX_STEPS": 2, "QUANTIZATION": "none", "GENERAL_MIX": 0.0}
    )
    knowledge = load_knowledge(run.knowledge_dir)
    assert result.manifest.knowledge_version == knowledge.version
    assert result.blind is not None and result.blind.manifest.knowledge_version is None
    assert result.blind.adapter_dir == run.blind_adapter_dir

    card, splits = run.read_job_card(), run.read_splits()
    index = train.training_index(run, card)
    raft = raft_frame(card, splits["train"], index)
    answerable = raft[raft["sources"].map(len) > 0]
    shown, hidden = answerable[answerable["source_shown"]], answerable[~answerable["source_shown"]]
    assert all(any(i.split("#")[0] in row.sources for i in row.retrieved) for row in shown.itertuples())
    assert not any(i.split("#")[0] in row.sources for row in hidden.itertuples() for i in row.retrieved)
    assert all(card.knowledge.abstain_phrase in target for target in hidden["target"])
    tokenizer = __import__("tunebook.modeling.models", fromlist=["x"]).load_tokenizer(tiny_model)
    first = shown.iloc[0]
    assert "Passages:\n[" in render_text(tokenizer, card, f"Passages:\n{first.context}\n\nMessage:\n{first.text}")

    evaluated = evaluation.evaluate_run(
        run,
        evaluation.load_candidate(run, tiny_model),
        evaluation.EvaluateSettings(bootstrap_resamples=50, train_sample=0, base_model=tiny_model),
    )
    assert "retrieved" in evaluated.tuned and "blind" in evaluated.named_scores
    assert evaluated.labels()["blind"] == "tuned, document-blind"
    assert evaluated.paired_blind is not None
    table = evaluated.freshness
    assert table.loc["blind", "answers from"] == "weights only" and table.loc["tuned", "answers from"] == "passages"
    evaluation.save_evaluation(run, evaluated)
    spec = run.read_system()
    assert spec.trained and spec.knowledge["version"] == knowledge.version
    assert (run.system_knowledge / "index.json").is_file()


def test_a_new_knowledge_version_is_a_release_of_its_own_and_can_be_rolled_back(rag_run, tiny_model, tmp_path):
    import shutil

    from tunebook import cli
    from tunebook.registry import register as registration
    from tunebook.registry import store as registry
    from tunebook.release.step import release_run_folder

    run = RunFolder(tmp_path / "runs" / "first")
    shutil.copytree(rag_run.root, run.root)
    system.adopt_variant(run, "rag", "answers from the help centre")
    settings = evaluation.EvaluateSettings(bootstrap_resamples=50, train_sample=0, base_model=tiny_model)
    evaluation.save_evaluation(run, evaluation.evaluate_run(run, system.load_system(run, tiny_model), settings))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parameters = {"BASE_MODEL": tiny_model, "TRACKING_URI": uri, "PARITY_EXAMPLES": 4, "LATENCY_EXAMPLES": 2}
    first = release_run_folder(run.root, parameters)
    assert first.version == "1"
    store = registry.open_registry(uri)
    if not first.promoted:  # on the tiny model the trivial answer can beat it: make it the champion to replace
        registration.promote(store, "help_centre", 1, force=True, reason="the champion a knowledge update replaces")

    v2 = load_knowledge(rag_run.fresh_knowledge_dir)
    into = tmp_path / "runs" / "second"
    code = cli.main(
        [
            "release",
            str(run.root),
            "--knowledge",
            v2.folder,
            "--into",
            str(into),
            *[f"-p={k}={v}" for k, v in parameters.items()],
        ]
    )
    assert code == 0
    second = RunFolder(into)
    assert second.read_system().knowledge["version"] == v2.version
    assert second.read_dataset_version().previous_knowledge.version == load_knowledge(run.knowledge_dir).version
    test = second.read_splits()["test"]
    assert test["facts"].tolist() == test["fresh_facts"].tolist()  # judged on the later documents' facts
    versions = registry.versions(store, "help_centre")
    assert versions.index.tolist() == [1, 2]
    assert versions["knowledge"].tolist() == [load_knowledge(run.knowledge_dir).version[:12], v2.version[:12]]
    released = store.client.get_model_version(registry.model_name("help_centre"), "2").tags
    assert released[registry.TAG + "knowledge_version"] == v2.version
    assert released[registry.TAG + "system_kind"] == "rag"
    if not second.read_results("05_release").promoted:
        registration.promote(store, "help_centre", 2, force=True, reason="rolled back next")
    assert str(registry.champion(store, "help_centre").version) == "2"
    assert registration.rollback(store, "help_centre").champion == "1"
    assert str(registry.champion(store, "help_centre").version) == "1"


def _spoil(docs, case: str) -> None:
    """Plant one fault of the job card's knowledge checks in a copy of the help centre."""
    article = docs / "account" / "creating-an-account.md"
    if case == "duplicate id":
        (docs / "account" / "copy.md").write_text(article.read_text(encoding="utf-8"), encoding="utf-8")
    elif case == "no text":
        (docs / "account" / "blank.md").write_text("---\nid: blank\ntitle: Blank\n---\n\n", encoding="utf-8")
    elif case == "not utf-8":
        (docs / "account" / "latin.txt").write_bytes("Caf\xe9 opening hours.".encode("latin-1"))
    elif case == "unknown source":
        questions = docs.parent.parent / "questions.jsonl"
        rows = questions.read_text(encoding="utf-8").splitlines()
        first = json.loads(rows[0])
        rows[0] = json.dumps({**first, "source": "no-such-article"})
        questions.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("case", "named", "message"),
    [
        ("duplicate id", "copy.md", "is also the id of"),
        ("no text", "blank.md", "has no text"),
        ("not utf-8", "latin.txt", "UTF-8"),
        ("passage too long", ".", "do not fit"),
        ("unknown source", "questions.jsonl", "no-such-article"),
    ],
)
def test_bad_documents_stop_01_with_the_file_named_and_nothing_written(tmp_path, tiny_model, case, named, message):
    from tunebook.card import schema as job
    from tunebook.clean import step as cleaning
    from tunebook.core import artifacts
    from tunebook.define import approach

    card_path = write_job(tmp_path / "job", per_label=4, example="help_centre")
    _spoil(card_path.parent / "docs" / "v1", case)
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    card = job.load_job_card(card_path)
    run.write_job_card(card)
    run.write_approach(approach.decide_approach(card))
    run.write_results(
        "00_define_the_job",
        artifacts.JobResults(
            job=card.name,
            task_kind=card.task_kind,
            job_card_sha256=job.card_hash(card),
            approach="hybrid",
            proceed_to_training=True,
            forced=False,
            force_training=False,
        ),
    )
    written = sorted(p for p in run.root.rglob("*"))
    parameters = {"BASE_MODEL": tiny_model, "MAX_LENGTH": 64 if case == "passage too long" else 2048}
    with pytest.raises(TunebookError, match=message) as error:
        cleaning.clean_run_folder(run.root, parameters)
    assert named in str(error.value)
    assert sorted(p for p in run.root.rglob("*")) == written  # no dataset version, passages or report
