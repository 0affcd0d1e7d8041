"""The knowledge layer: documents read at runtime, split into passages, versioned by hash, indexed by a retriever
(BM25, a small dense embedding model, or both fused), put into prompts, and checked in answers.

A new retriever is a module in ``retrievers/`` with a ``Retriever`` subclass decorated by ``register_retriever``.
"""

from tunebook.knowledge.documents import Article, read_documents
from tunebook.knowledge.passages import Knowledge, Passage, check_fits, read_knowledge

__all__ = ["Article", "Knowledge", "Passage", "check_fits", "read_documents", "read_knowledge"]
