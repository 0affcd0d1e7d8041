"""The knowledge layer: reading documents (and refusing bad ones), passages and their version, retrieval and its
measurement, and the checks of facts, grounding, citations and abstention."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunebook.card.grounding import claims, freshness, knowledge_metrics
from tunebook.card.schema import load_job_card
from tunebook.errors import DataError, KnowledgeError
from tunebook.knowledge import read_documents, read_knowledge
from tunebook.knowledge.context import build_index, load_index
from tunebook.knowledge.measure import choose_retriever, compare_retrievers
from tunebook.knowledge.passages import split_article
from tunebook.knowledge.render import model_inputs
from tunebook.knowledge.retrievers import BM25, embedding_dir, fuse

ARTICLES = {
    "returns/returns-window.md": "---\nid: returns-window\ntitle: Returning an order\n---\nYou can return any order "
    "within 30 days of delivery. Refunds reach your card within 5 working days.\n",
    "delivery/express.md": "---\nid: express-delivery\ntitle: Express delivery\n---\nExpress delivery costs €6.95 and "
    "arrives the next working day when you order before 15:00.\n",
    "delivery/areas.txt": "Where we deliver\n\nWe deliver to Belgium, the Netherlands and Luxembourg.\n",
    "account/password.html": "<html><head><title>Resetting your password</title></head><body><h1>Resetting your "
    "password</h1><p>Tap Forgot password on the sign-in screen.</p><p>The reset link expires after 24 hours.</p>"
    "</body></html>",
}


def write_docs(folder: Path, articles: dict[str, str] = ARTICLES) -> Path:
    for name, text in articles.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


def test_markdown_text_and_html_are_read_as_articles_with_stable_ids(tmp_path):
    articles = {a.id: a for a in read_documents(write_docs(tmp_path / "docs"))}
    assert sorted(articles) == ["areas", "express-delivery", "password", "returns-window"]
    assert articles["areas"].title == "Where we deliver"
    assert articles["password"].title == "Resetting your password"
    assert (
        articles["password"].text
        == "Tap Forgot password on the sign-in screen.\n\nThe reset link expires after 24 hours."
    )
    assert articles["returns-window"].title == "Returning an order" and "---" not in articles["returns-window"].text


def test_the_version_is_the_same_for_the_same_passages_and_changes_with_a_fact(tmp_path):
    first = read_knowledge(write_docs(tmp_path / "a"))
    again = read_knowledge(write_docs(tmp_path / "b"))  # another folder, other file times: the same passages
    assert first.version == again.version
    changed = dict(ARTICLES, **{"delivery/express.md": ARTICLES["delivery/express.md"].replace("6.95", "7.95")})
    assert read_knowledge(write_docs(tmp_path / "c", changed)).version != first.version


def test_long_articles_are_split_at_sentence_ends_into_numbered_passages(tmp_path):
    (article,) = read_documents(write_docs(tmp_path / "d", {"a.md": "# Long\n" + "One two three four five. " * 30}))
    passages = split_article(article, passage_words=40)
    assert [p.id for p in passages] == ["a#1", "a#2", "a#3", "a#4"]
    assert all(len(p.text.split()) <= 40 for p in passages)
    assert " ".join(p.text for p in passages).split() == article.text.split()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no documents"),
        ({"a.md": "---\nid: same\n---\nOne.", "b.md": "---\nid: same\n---\nTwo."}, "is also the id of"),
        ({"empty.md": "---\nid: empty\ntitle: Empty\n---\n\n"}, "has no text"),
        ({"bad id.md": "Text."}, "may hold only letters"),
        ({"front.md": "---\nid: [unclosed\n---\nText."}, "front matter is not valid YAML"),
    ],
)
def test_bad_documents_stop_with_the_file_named(tmp_path, files, message):
    folder = write_docs(tmp_path / "docs", files)
    folder.mkdir(exist_ok=True)
    with pytest.raises(KnowledgeError, match=message) as error:
        read_documents(folder)
    if files:
        assert str(folder) in str(error.value)


def test_a_file_that_is_not_utf8_or_cannot_be_read_is_named(tmp_path, monkeypatch):
    folder = write_docs(tmp_path / "docs", {"ok.md": "Fine."})
    (folder / "latin.txt").write_bytes("Caf\xe9 au lait\n\nTrois euros.".encode("latin-1"))
    with pytest.raises(KnowledgeError, match=r"latin\.txt: not UTF-8"):
        read_documents(folder)
    (folder / "latin.txt").unlink()
    locked = folder / "locked.md"
    locked.write_text("Secret.")
    read_text = Path.read_text

    def refuse(path, *args, **kwargs):  # root reads any file, so the refusal is the operating system's, simulated
        if path.name == "locked.md":
            raise PermissionError(13, "Permission denied")
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(KnowledgeError, match=r"locked\.md: cannot be read \(Permission denied\)"):
        read_documents(folder)


def test_a_passage_too_long_for_the_context_names_its_file(tmp_path, tokenizer):
    from tunebook.knowledge import check_fits
    from tunebook.knowledge.passages import load_knowledge, save_knowledge

    knowledge = read_knowledge(write_docs(tmp_path / "docs"))
    sizes = [(len(tokenizer(p.text, add_special_tokens=False)["input_ids"]), p) for p in knowledge.passages]
    size, longest = max(sizes, key=lambda pair: pair[0])
    named = rf"{re.escape(longest.path)}: passage {longest.id} has {size} tokens.*half of MAX_LENGTH"
    with pytest.raises(KnowledgeError, match=named):
        check_fits(knowledge, tokenizer, 2 * size - 2, k=1)
    checked = check_fits(knowledge, tokenizer, 2048, k=3)
    assert knowledge.max_length is None and checked.max_length == 2048 and checked.version == knowledge.version
    assert load_knowledge(save_knowledge(checked, tmp_path / "saved")).max_length == 2048


def test_bm25_finds_the_source_and_a_saved_index_answers_the_same(tmp_path):
    knowledge = read_knowledge(write_docs(tmp_path / "docs"))
    index = build_index(knowledge, "bm25", k=2)
    frame = index.attach(pd.DataFrame({"text": ["How long do I have to return my order?", "zzz qqq"]}))
    assert frame["retrieved"][0][0] == "returns-window"
    assert frame["retrieved"][1] == [] and frame["context"][1] == ""  # no known word: nothing retrieved
    assert "[returns-window] Returning an order\n" in frame["context"][0]
    assert model_inputs(frame)[0].startswith("Passages:\n[returns-window]")
    assert model_inputs(frame)[1] == "zzz qqq"
    loaded = load_index(index.save(tmp_path / "index"))
    again = loaded.attach(pd.DataFrame({"text": ["How long do I have to return my order?", "zzz qqq"]}))
    assert again["retrieved"].tolist() == frame["retrieved"].tolist()


def test_reciprocal_rank_fusion_rewards_passages_both_lists_rank_high():
    fused = fuse([[[(0, 9.0), (1, 5.0)]], [[(2, 0.9), (1, 0.8)]]], k=3)
    assert [index for index, _ in fused[0]] == [1, 0, 2]  # second in both lists beats first in one
    assert fused[0][0][1] == pytest.approx(2 / 62) and fused[0][1][1] == pytest.approx(1 / 61)


@pytest.mark.skipif(embedding_dir() is None, reason="the packaged embedding model is not installed")
def test_dense_retrieval_finds_a_paraphrase_and_its_weights_are_checked(tmp_path):
    knowledge = read_knowledge(write_docs(tmp_path / "docs"))
    index = build_index(knowledge, "dense", k=1)
    frame = index.attach(pd.DataFrame({"text": ["I forgot my login secret, what now?"]}))
    assert frame["retrieved"][0] == ["password"]
    saved = index.save(tmp_path / "index")
    vectors = np.load(saved / "dense.npy")
    assert vectors.shape == (4, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_dense_index_embeds_queries_in_the_precision_it_was_built_with(tmp_path):
    import json

    from tunebook.knowledge.retrievers.dense import default_dtype, embed

    knowledge = read_knowledge(write_docs(tmp_path / "docs"))
    saved = build_index(knowledge, "dense", k=1).save(tmp_path / "index")
    meta = json.loads((saved / "dense.json").read_text())
    assert meta["dtype"] == default_dtype() and load_index(saved).retriever.dtype == meta["dtype"]
    (saved / "dense.json").write_text(json.dumps({"model_sha256": meta["model_sha256"]}))  # written before the choice
    assert load_index(saved).retriever.dtype == "float32"
    texts = [p.text for p in knowledge.passages]
    assert (embed(texts, dtype="float32") * embed(texts, dtype="bfloat16")).sum(1).min() > 0.999


def test_retrievers_are_compared_on_recall_and_mrr_and_the_best_is_chosen(tmp_path):
    knowledge = read_knowledge(write_docs(tmp_path / "docs"))
    val = pd.DataFrame(
        {
            "text": ["return an order", "express delivery price", "which countries do you deliver to", "hello"],
            "sources": [["returns-window"], ["express-delivery"], ["areas"], []],
        }
    )
    table, fitted = compare_retrievers(knowledge, val, k=1, names=["bm25"])
    assert table.loc["bm25", "questions"] == 3  # the question without a source is not asked
    assert table.loc["bm25", "recall@1"] == pytest.approx(1.0)
    assert table.loc["bm25", "mrr"] == pytest.approx(1.0)
    assert isinstance(fitted["bm25"], BM25)
    table.loc["other"] = table.loc["bm25"]
    with pytest.raises(KeyError):  # only registered retrievers are compared
        choose_retriever(table, 1)


CARD_LINES = {"abstain_phrase": "passed your question to a colleague"}


@pytest.fixture()
def grounded_card(tmp_path):
    import yaml

    source = Path(__file__).resolve().parents[2] / "examples" / "reply_drafting" / "job.yaml"
    card = yaml.safe_load(source.read_text())
    card["knowledge"] = {"documents": str(write_docs(tmp_path / "docs")), **CARD_LINES}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(card))
    (tmp_path / "replies.jsonl").write_text("")
    return load_job_card(tmp_path / "job.yaml")


def answers(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["id"], frame["target"], frame["tags"] = [str(i) for i in range(len(frame))], "", ""
    return frame


def test_facts_groundedness_citations_and_abstention_are_checked_by_program(grounded_card):
    context = "[express-delivery] Express delivery\nExpress delivery costs €6.95 and arrives the next working day."
    frame = answers(
        [
            # right fact, grounded, cites a passage it was given
            {
                "text": "express price?",
                "prediction": "It costs €6.95 [express-delivery].",
                "facts": ["€6.95"],
                "sources": ["express-delivery"],
                "retrieved": ["express-delivery"],
                "context": context,
            },
            # wrong fact, invented: ungrounded, and cites a passage it was not given
            {
                "text": "express price?",
                "prediction": "It costs €9.95 [returns-window].",
                "facts": ["€6.95"],
                "sources": ["express-delivery"],
                "retrieved": ["express-delivery"],
                "context": context,
            },
            # no answer in any document: handed over
            {
                "text": "furniture?",
                "prediction": "I've passed your question to a colleague.",
                "facts": [],
                "sources": [],
                "retrieved": ["areas"],
                "context": "[areas] Where we deliver\nBelgium.",
            },
            # no answer, but the model invents one
            {
                "text": "bitcoin?",
                "prediction": "Yes, bitcoin works in Ghent Store.",
                "facts": [],
                "sources": [],
                "retrieved": [],
                "context": "",
            },
        ]
    )
    scores = knowledge_metrics(grounded_card, frame)
    assert scores["fact_accuracy"] == pytest.approx(0.5)
    assert scores["abstention"] == pytest.approx(0.5)
    assert scores["knowledge_accuracy"] == pytest.approx(0.5)
    assert scores["citation_validity"] == pytest.approx(0.5)
    assert scores["groundedness"] == pytest.approx(1 / 3)  # €6.95 found; €9.95 and Ghent Store not
    assert claims(
        "Hi Ann,\n\nOrders before 15:00 ship to Luxembourg in 2 working days.\n\nParcelly Support", grounded_card
    ) == [
        "15:00",
        "2 working days",
        "Luxembourg",
    ]


def test_freshness_counts_stale_facts_current_facts_and_hand_overs_on_removed_articles(grounded_card):
    frame = answers(
        [
            {
                "text": "a",
                "prediction": "Within 30 days.",
                "facts": ["30 days"],
                "fresh_facts": ["14 days"],
                "sources": ["r"],
            },
            {
                "text": "b",
                "prediction": "Within 14 days.",
                "facts": ["30 days"],
                "fresh_facts": ["14 days"],
                "sources": ["r"],
            },
            {"text": "c", "prediction": "€6.95.", "facts": ["€6.95"], "fresh_facts": ["€6.95"], "sources": ["e"]},
            {"text": "d", "prediction": "Next day.", "facts": ["next day"], "fresh_facts": [], "sources": ["gone"]},
        ]
    )
    fresh = freshness(grounded_card, frame)
    assert fresh["stale_fact_rate"] == pytest.approx(0.5) and fresh["changed_questions"] == 2
    assert fresh["fresh_fact_accuracy"] == pytest.approx(2 / 3)
    assert fresh["removed_abstention"] == 0.0 and fresh["removed_questions"] == 1


def test_examples_must_name_articles_the_documents_have(grounded_card, tmp_path):
    from tunebook.clean.step import check_sources
    from tunebook.data.examples import to_examples

    raw = pd.DataFrame(
        {"id": ["1", "2"], "text": ["a", "b"], "target": ["x", "y"], "source": ["returns-window", "areas,nope"]}
    )
    examples, _ = to_examples(raw, grounded_card, "q.jsonl")
    assert examples["sources"].tolist() == [["returns-window"], ["areas", "nope"]]
    with pytest.raises(DataError, match=r"row 2 \(id 2\): \['nope'\]"):
        check_sources(examples, read_knowledge(grounded_card.knowledge.documents), "q.jsonl")
    with pytest.raises(DataError, match="no column 'source'"):
        to_examples(raw.drop(columns="source"), grounded_card, "q.jsonl")


@pytest.mark.parametrize("example", ["support_tools", "order_extraction"])
def test_tool_selection_and_extraction_answer_from_passages_on_the_tiny_model(example, tiny_model, tmp_path):
    import yaml
    from conftest import write_job

    from tunebook.data.examples import load_examples
    from tunebook.modeling import predict
    from tunebook.modeling.models import load_tokenizer
    from tunebook.modeling.prompts import render_text
    from tunebook.scoring.metrics import evaluate

    policy = {
        "refunds.md": "---\nid: refund-policy\ntitle: Who may be refunded\n---\nRefunds are allowed within 30 days "
        "of delivery; after that, hand the request to a person.",
        "catalogue.md": "---\nid: catalogue\ntitle: Products\n---\nWe sell the Snack Box (SB-1) and the Family Box "
        "(FB-2).",
    }
    card_path = write_job(tmp_path / "job", per_label=1, example=example)
    write_docs(tmp_path / "job" / "policy", policy)
    card_data = yaml.safe_load(card_path.read_text())
    card_data["knowledge"] = {"documents": "policy", "k": 1, "abstain_phrase": "hand the request to a person"}
    card_path.write_text(yaml.safe_dump(card_data))
    rows = pd.read_json(tmp_path / "job" / card_data["data"]["path"], lines=True, dtype={"id": str})
    rows["source"] = ["refund-policy" if i % 2 else "" for i in range(len(rows))]
    rows.to_json(tmp_path / "job" / card_data["data"]["path"], orient="records", lines=True)
    card = load_job_card(card_path)
    examples, _ = load_examples(card)
    index = build_index(read_knowledge(card.knowledge.documents), "bm25", card.knowledge.k)
    frame = index.attach(examples.head(4))
    tokenizer = load_tokenizer(tiny_model)
    shown = render_text(tokenizer, card, model_inputs(frame)[0])
    assert "cite the passage you use" in shown and "hand the request to a person" in shown
    model, tokenizer = predict.load_for_inference(tiny_model)
    answers = predict.predict(model, tokenizer, card, frame, batch_size=4, progress=False, max_new_tokens=8)
    assert answers["retrieved"].tolist() == frame["retrieved"].tolist()
    scores = evaluate(card, answers)
    assert scores["primary"] == "knowledge_accuracy" and 0 <= scores["knowledge_accuracy"] <= 1
    assert {"fact_accuracy", "groundedness", "citation_validity", "abstention"} <= set(scores)


def test_06_sees_retrieval_weaken_and_documents_change_after_the_release(grounded_card, tmp_path):
    from tunebook.monitor.signals import knowledge_on_disk, retrieval_health

    rng = np.random.default_rng(0)
    reference = pd.Series(rng.normal(10, 1, 200))
    same = retrieval_health(reference, pd.Series(rng.normal(10, 1, 100)))
    weaker = retrieval_health(reference, pd.Series(np.r_[rng.normal(10, 1, 60), rng.normal(4, 1, 40)]))
    assert same["top_score_p_value"][0] > 0.01 and weaker["top_score_p_value"][0] < 0.001
    assert same["no_passage_increase"][0] < 0.05 and weaker["no_passage_increase"][0] > 0.3
    released = read_knowledge(grounded_card.knowledge.documents).version
    assert knowledge_on_disk(grounded_card, released)[0] == 0.0
    (Path(grounded_card.knowledge.documents) / "delivery" / "express.md").write_text(
        ARTICLES["delivery/express.md"].replace("6.95", "7.95")
    )
    changed, detail, note = knowledge_on_disk(grounded_card, released)
    assert changed == 1.0 and detail["on_disk"] != released and "release the new knowledge version" in note


def test_the_prompt_prefix_cache_stays_shared_when_passages_are_in_the_prompt(grounded_card, tiny_model):
    from tunebook.modeling import decoding, predict
    from tunebook.modeling.prompts import build_messages, encode_prompt

    index = build_index(read_knowledge(grounded_card.knowledge.documents), "bm25", k=2)
    questions = ["How long do I have to return my order?", "What does express delivery cost?"]
    texts = model_inputs(index.attach(pd.DataFrame({"text": questions})))
    assert all(text.count("[") >= 2 for text in texts)  # the passages are in the user message
    model, tokenizer = predict.load_for_inference(tiny_model)
    prefix = decoding.PromptPrefix(model, tokenizer, grounded_card)
    prompts = [encode_prompt(tokenizer, build_messages(grounded_card, text)) for text in texts]
    assert prefix.covers(model, prompts)  # the system prompt is computed once for every prompt with passages
    assert " ".join(grounded_card.description.split()[:8]) in " ".join(tokenizer.decode(prefix.tokens).split())
    plain = decoding.generate(model, tokenizer, grounded_card, texts, None, 2, 6, False)
    cached = decoding.generate(model, tokenizer, grounded_card, texts, None, 2, 6, False, prefix=prefix)
    assert cached == plain
