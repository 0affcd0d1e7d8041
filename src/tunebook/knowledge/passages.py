"""Articles split into the passages a prompt quotes, and the knowledge version: a hash over those passages."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tunebook.errors import KnowledgeError
from tunebook.knowledge.documents import Article, read_documents

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Passage:
    """A piece of one article small enough for a prompt; ``id`` is the article id, or ``<article>#<n>`` when the
    article was split into several."""

    id: str
    article: str
    title: str
    text: str
    path: str


@dataclass(frozen=True)
class Knowledge:
    """Passages of one version of the documents, with the version and where they were read from."""

    passages: list[Passage]
    version: str
    folder: str
    passage_words: int
    max_length: int | None = None  # the prompt length in tokens its passages were checked to fit (check_fits)

    @property
    def articles(self) -> list[str]:
        """The article ids, in order."""
        return list(dict.fromkeys(p.article for p in self.passages))


def _pieces(paragraph: str, limit: int) -> list[str]:
    """A paragraph cut at sentence ends into pieces of at most ``limit`` words (a longer sentence stays whole)."""
    pieces, current = [], []
    for sentence in _SENTENCE_END.split(paragraph):
        words = sentence.split()
        if current and len(current) + len(words) > limit:
            pieces.append(" ".join(current))
            current = []
        current += words
    return pieces + ([" ".join(current)] if current else [])


def split_article(article: Article, passage_words: int) -> list[Passage]:
    """The article's paragraphs packed into passages of at most ``passage_words`` words, in order."""
    chunks, current = [], []
    for paragraph in re.split(r"\n\s*\n", article.text):
        for piece in _pieces(" ".join(paragraph.split()), passage_words):
            words = piece.split()
            if current and len(current) + len(words) > passage_words:
                chunks.append(" ".join(current))
                current = []
            current += words
    chunks += [" ".join(current)] if current else []
    single = len(chunks) == 1
    return [
        Passage(article.id if single else f"{article.id}#{n}", article.id, article.title, text, article.path)
        for n, text in enumerate(chunks, start=1)
    ]


def knowledge_version(passages: list[Passage]) -> str:
    """SHA-256 over every passage's id, article, title and text, in order (file paths and times play no part)."""
    digest = hashlib.sha256()
    for p in passages:
        digest.update(json.dumps([p.id, p.article, p.title, p.text], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def read_knowledge(folder: str | Path, passage_words: int = 120) -> Knowledge:
    """The documents under ``folder`` as passages, checked, with their version."""
    passages = [p for article in read_documents(folder) for p in split_article(article, passage_words)]
    return Knowledge(passages, knowledge_version(passages), str(folder), passage_words)


def check_fits(knowledge: Knowledge, tokenizer, max_length: int, k: int) -> Knowledge:
    """The knowledge, marked as checked for ``max_length``; stops when ``k`` of its longest passages take more than
    half of those tokens (the other half is the rest of the prompt and the answer), naming the longest one's file."""
    limit = max_length // 2
    count = [
        len(ids) for ids in tokenizer([p.text for p in knowledge.passages], add_special_tokens=False)["input_ids"]
    ]
    sizes = sorted(zip(count, knowledge.passages), key=lambda x: -x[0])
    total = sum(size for size, _ in sizes[:k])
    if total > limit:
        size, longest = sizes[0]
        raise KnowledgeError(
            f"{Path(knowledge.folder) / longest.path}: passage {longest.id} has {size} tokens, and {k} passages this "
            f"long ({total} tokens) do not fit the {limit} tokens the prompt has for them (half of MAX_LENGTH "
            f"{max_length}). Lower knowledge.passage_words or knowledge.k in the job card, or split the article."
        )
    return replace(knowledge, max_length=max_length)


def save_knowledge(knowledge: Knowledge, folder: Path) -> Path:
    """Write the passages (JSON lines) and the version beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "passages.jsonl").open("w", encoding="utf-8") as handle:
        for p in knowledge.passages:
            handle.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    meta = {
        "version": knowledge.version,
        "folder": knowledge.folder,
        "passage_words": knowledge.passage_words,
        "max_length": knowledge.max_length,
    }
    (folder / "knowledge.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def load_knowledge(folder: Path) -> Knowledge:
    """Passages written by ``save_knowledge``; refuses them when they no longer match their recorded version."""
    meta_file, passages_file = folder / "knowledge.json", folder / "passages.jsonl"
    if not meta_file.is_file() or not passages_file.is_file():
        raise KnowledgeError(f"{folder}: no saved knowledge (knowledge.json, passages.jsonl); run 01 first.")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    lines = passages_file.read_text(encoding="utf-8").splitlines()
    passages = [Passage(**json.loads(line)) for line in lines if line.strip()]
    if knowledge_version(passages) != meta["version"]:
        raise KnowledgeError(f"{passages_file} was changed after it was written (its hash is not {meta['version']}).")
    return Knowledge(passages, meta["version"], meta["folder"], meta["passage_words"], meta.get("max_length"))
