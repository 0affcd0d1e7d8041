"""Retrieved passages put next to each input: what the model is shown, and which passages those were."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunebook.errors import KnowledgeError
from tunebook.knowledge.passages import Knowledge, load_knowledge, save_knowledge
from tunebook.knowledge.render import render_passages
from tunebook.knowledge.retrievers import Retriever, retriever_class


@dataclass
class KnowledgeIndex:
    """A retriever fitted on one knowledge version, and how many passages each prompt gets."""

    knowledge: Knowledge
    retriever: Retriever
    k: int

    @property
    def name(self) -> str:
        """The retriever's name."""
        return self.retriever.name

    def attach(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the ``k`` passages retrieved for each text: their ids, the rendered context, the top score."""
        frame = frame.copy()
        hits = self.retriever.search(frame["text"].astype(str).tolist(), self.k)
        passages = self.knowledge.passages
        frame["retrieved"] = [[passages[i].id for i, _ in found] for found in hits]
        frame["context"] = [render_passages([passages[i] for i, _ in found]) for found in hits]
        frame["top_score"] = [found[0][1] if found else 0.0 for found in hits]
        return frame

    def save(self, folder: Path) -> Path:
        """Write the passages, the retriever's index and its settings into ``folder``."""
        save_knowledge(self.knowledge, folder)
        self.retriever.save(folder)
        meta = {"retriever": self.name, "k": self.k, "version": self.knowledge.version}
        (folder / "index.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return folder


def build_index(knowledge: Knowledge, retriever: str, k: int) -> KnowledgeIndex:
    """A fitted index over ``knowledge`` with the named retriever."""
    return KnowledgeIndex(knowledge, retriever_class(retriever)().fit(knowledge.passages), k)


def load_index(folder: Path) -> KnowledgeIndex:
    """The index ``KnowledgeIndex.save`` wrote."""
    meta_file = folder / "index.json"
    if not meta_file.is_file():
        raise KnowledgeError(f"{folder}: no retrieval index (index.json); run 02_prove_the_baseline first.")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    knowledge = load_knowledge(folder)
    if knowledge.version != meta["version"]:
        raise KnowledgeError(
            f"{folder}: the index was built for knowledge {meta['version'][:12]}, not these passages."
        )
    return KnowledgeIndex(knowledge, retriever_class(meta["retriever"]).load(folder, knowledge.passages), meta["k"])
