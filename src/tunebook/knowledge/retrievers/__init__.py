"""Retrievers, one module each; importing this package registers them all."""

from tunebook.knowledge.retrievers.base import RETRIEVERS, Hits, Retriever, register_retriever, retriever_class
from tunebook.knowledge.retrievers.bm25 import BM25
from tunebook.knowledge.retrievers.dense import Dense, embed, embedding_dir
from tunebook.knowledge.retrievers.hybrid import Hybrid, fuse

__all__ = [
    "BM25",
    "RETRIEVERS",
    "Dense",
    "Hits",
    "Hybrid",
    "Retriever",
    "embed",
    "embedding_dir",
    "fuse",
    "register_retriever",
    "retriever_class",
]
