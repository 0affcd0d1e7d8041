"""Benchmark: indexing and retrieval speed of the knowledge layer's retrievers over 10,000 passages, side by side
with the targets of issue 28 (BM25 indexing under 5 s, dense under 120 s, retrieving k passages under 20 ms p50).

Run:  .venv/bin/python benchmarks/retrieval_speed.py [--passages 10000] [--queries 200] [--k 3]

The passages are the help-centre example's (examples/help_centre/docs/v1) repeated with a number in each title and a
shuffled order of sentences, so their lengths (60-160 words) are those of real help articles. The queries are the
example's questions. Each retriever is fitted once (wall time) and asked every query one at a time (the serving case):
the median and 95th percentile per query. Dense and hybrid rows need the packaged embedding model; the dense model's
weights are what tunebook picks for this CPU (bfloat16 where it multiplies them natively) unless --dense-dtype says.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook.knowledge import read_knowledge  # noqa: E402
from tunebook.knowledge.passages import Passage  # noqa: E402
from tunebook.knowledge.retrievers import RETRIEVERS  # noqa: E402

TARGETS = {"bm25": (5.0, 20.0), "dense": (120.0, 20.0), "hybrid": (125.0, 20.0)}  # (index s, p50 ms)


def passages(count: int, seed: int = 0) -> list[Passage]:
    """``count`` passages made from the example's, each with its sentences shuffled and a number in its title."""
    source = read_knowledge(ROOT / "examples" / "help_centre" / "docs" / "v1").passages
    rng = random.Random(seed)
    made = []
    for n in range(count):
        base = source[n % len(source)]
        sentences = base.text.split(". ")
        rng.shuffle(sentences)
        made.append(Passage(f"{base.id}-{n}", base.article, f"{base.title} {n}", ". ".join(sentences), base.path))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--retrievers", default="bm25,dense,hybrid", help="comma-separated names to measure")
    parser.add_argument(
        "--dense-dtype",
        default="",
        help="the dense model's weights: float32 | bfloat16 (default: what tunebook picks)",
    )
    args = parser.parse_args()
    wanted = args.retrievers.split(",")
    corpus = passages(args.passages)
    questions = pd.read_json(ROOT / "examples" / "help_centre" / "questions.jsonl", lines=True)["text"]
    queries = [q for q in questions.astype(str) if q.strip()][: args.queries]
    words = statistics.mean(len(p.text.split()) for p in corpus)
    print(f"{len(corpus)} passages (mean {words:.0f} words), {len(queries)} queries one at a time, k={args.k}")
    rows = []
    for name, cls in sorted(RETRIEVERS.items(), key=lambda item: item[1].simplicity):
        if name not in wanted:
            continue
        if cls.available():
            print(f"{name}: skipped ({cls.available()})")
            continue
        retriever = cls()
        if name == "dense" and args.dense_dtype:
            retriever.dtype = args.dense_dtype
        started = time.perf_counter()
        retriever = retriever.fit(corpus)
        indexed = time.perf_counter() - started
        retriever.search(queries[:1], args.k)  # warm: the first call loads what it needs
        times = []
        for query in queries:
            started = time.perf_counter()
            retriever.search([query], args.k)
            times.append(1000 * (time.perf_counter() - started))
        times.sort()
        index_target, query_target = TARGETS[name]
        rows.append(
            {
                "retriever": name,
                "weights": getattr(retriever, "dtype", None)
                or next((p.dtype for p in getattr(retriever, "parts", []) if hasattr(p, "dtype")), "-"),
                "index s": round(indexed, 2),
                "target index s": index_target,
                "query p50 ms": round(statistics.median(times), 2),
                "query p95 ms": round(times[int(0.95 * (len(times) - 1))], 2),
                "target p50 ms": query_target,
            }
        )
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
