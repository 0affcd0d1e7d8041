"""Reading a folder of documents: one article per Markdown, plain-text or HTML file, each with a stable id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import yaml

from tunebook.errors import KnowledgeError

SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm")
ARTICLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)


@dataclass(frozen=True)
class Article:
    """One document: its id, title, text and the file it came from (relative to the documents folder)."""

    id: str
    title: str
    text: str
    path: str


class _HtmlText(HTMLParser):
    """The title and the visible text of an HTML page, one paragraph per block element."""

    BLOCKS = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "br", "tr", "section", "article", "ul", "ol"}
    SKIP = {"script", "style", "head"}

    def __init__(self) -> None:
        super().__init__()
        self.title, self.parts, self.meta_id = "", [""], None
        self._in_title, self._skipping = False, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "title":
            self._in_title = True
        elif tag == "meta" and attrs.get("name") == "id":
            self.meta_id = attrs.get("content")
        elif tag in self.SKIP:
            self._skipping += 1
        if tag in self.BLOCKS:
            self.parts.append("")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP:
            self._skipping = max(0, self._skipping - 1)
        if tag in self.BLOCKS:
            self.parts.append("")

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skipping:
            self.parts[-1] += data

    def text(self) -> str:
        paragraphs = (" ".join(part.split()) for part in self.parts)
        return "\n\n".join(p for p in paragraphs if p)


def _read_text(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise KnowledgeError(
            f"{shown}: not UTF-8 text (byte {error.start} cannot be decoded). Re-save the file as UTF-8."
        ) from None
    except OSError as error:
        raise KnowledgeError(f"{shown}: cannot be read ({error.strerror}). Check the file's permissions.") from None


def _markdown(raw: str, path: Path, shown: str) -> tuple[str | None, str, str]:
    meta, body = {}, raw
    match = _FRONT_MATTER.match(raw)
    if match:
        try:
            meta = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError as error:
            raise KnowledgeError(f"{shown}: the front matter is not valid YAML ({error}).") from None
        if not isinstance(meta, dict):
            raise KnowledgeError(f"{shown}: the front matter must be a mapping (id: ..., title: ...).")
        body = raw[match.end() :]
    heading = re.match(r"\s*#\s+(.+)\n", body)
    title = str(meta.get("title") or (heading.group(1) if heading else path.stem)).strip()
    if heading and not meta.get("title"):
        body = body[heading.end() :]
    article_id = meta.get("id")
    return (str(article_id) if article_id is not None else None), title, body.strip()


def _plain(raw: str, path: Path) -> tuple[None, str, str]:
    lines = raw.strip().split("\n", 1)
    if len(lines) == 2 and lines[1].startswith("\n"):
        return None, lines[0].strip(), lines[1].strip()
    return None, path.stem, raw.strip()


def _html(raw: str, path: Path) -> tuple[str | None, str, str]:
    parser = _HtmlText()
    parser.feed(raw)
    parser.close()
    text = parser.text()
    title = " ".join(parser.title.split()) or path.stem
    if text.startswith(title):  # the page's own <h1> repeating its title
        text = text[len(title) :].strip()
    return parser.meta_id, title, text


def read_article(path: Path, folder: Path) -> Article:
    """One file as an article; its id from the front matter (or an HTML ``<meta name="id">``), else its file name."""
    shown = str(path)
    raw = _read_text(path, shown)
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        article_id, title, text = _markdown(raw, path, shown)
    elif suffix == ".txt":
        article_id, title, text = _plain(raw, path)
    else:
        article_id, title, text = _html(raw, path)
    article_id = article_id or path.stem
    if not ARTICLE_ID.match(article_id):
        raise KnowledgeError(
            f"{shown}: article id '{article_id}' may hold only letters, digits, '-', '_' and '.' (it is cited "
            "in answers as [id]). Rename the file or set id: in its front matter."
        )
    if not text.strip():
        raise KnowledgeError(f"{shown}: the article has no text. Write its body or remove the file.")
    return Article(article_id, title, text, str(path.relative_to(folder)))


def read_documents(folder: str | Path) -> list[Article]:
    """Every article under ``folder`` (recursively), in id order; stops at the first file that cannot be used."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KnowledgeError(
            f"documents folder not found: {folder}. Check knowledge.documents in the job card "
            "(relative paths start at the card's folder)."
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise KnowledgeError(
            f"{folder}: no documents (looked for {', '.join(SUFFIXES)} files). Put one article per file there."
        )
    articles: dict[str, Article] = {}
    for path in files:
        article = read_article(path, folder)
        if article.id in articles:
            raise KnowledgeError(
                f"{path}: article id '{article.id}' is also the id of {folder / articles[article.id].path}. "
                "Ids must be unique (answers cite them): rename one file or change its front matter id."
            )
        articles[article.id] = article
    return [articles[key] for key in sorted(articles)]
