"""Benchmark: audit 100,000 short examples (target: under 60 s on a 2-core CPU).

Run:  .venv/bin/python benchmarks/audit_100k.py [N]

The examples are the support-triage tickets with random word edits, so there are real near duplicates.
Reference: exact all-pairs Jaccard (quadratic) on a 2,000-example sample, timed and extrapolated to N,
and used to measure the recall of the MinHash + LSH near-duplicate search at the same threshold.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook.card import schema as job  # noqa: E402
from tunebook.clean import audit  # noqa: E402
from tunebook.data import examples as data  # noqa: E402
from tunebook.data import neardup  # noqa: E402
from tunebook.modeling import models  # noqa: E402


def synthetic(card: job.JobCard, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` short examples: tickets with one or two random word edits."""
    base, _ = data.load_examples(card)
    base = base[base["text"].str.strip() != ""]
    rng = np.random.default_rng(seed)
    vocabulary = " ".join(base["text"]).split()
    picks = rng.integers(0, len(base), n)
    texts, targets = [], []
    for i in picks:
        words = base["text"].iloc[i].split()
        for _ in range(rng.integers(1, 3)):
            words[rng.integers(0, len(words))] = vocabulary[rng.integers(0, len(vocabulary))]
        texts.append(" ".join(words))
        targets.append(base["target"].iloc[i])
    return pd.DataFrame(
        {"row": np.arange(1, n + 1), "id": [f"S{k}" for k in range(n)], "text": texts, "target": targets, "tags": ""}
    )


def exact_pairs(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    """All pairs at or above ``threshold`` by exact Jaccard (quadratic)."""
    sets = [set(neardup.shingles(t).tolist()) for t in texts]
    return {
        (i, j)
        for i in range(len(sets))
        for j in range(i + 1, len(sets))
        if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold
    }


def main(n: int = 100_000, threshold: float = 0.8) -> None:
    card = job.load_job_card(ROOT / "examples" / "support_triage" / "job.yaml")
    frame = synthetic(card, n)
    tokenizer = models.load_tokenizer(models.resolve_base_model("bundled"))

    started = time.perf_counter()
    kept, removed = data.clean(frame)
    cleaned = time.perf_counter()
    found = audit.run_audit(card, kept, near_threshold=threshold, tokenizer=tokenizer, max_length=512)
    finished = time.perf_counter()

    sample = kept["text"].head(2000).tolist()
    t0 = time.perf_counter()
    truth = exact_pairs(sample, threshold)
    exact_seconds = time.perf_counter() - t0
    lsh = neardup.near_duplicate_pairs(sample, threshold)
    found_pairs = set(zip(lsh["i"].astype(int), lsh["j"].astype(int)))
    recall = len(found_pairs & truth) / len(truth) if truth else 1.0

    print(f"examples: {n:,} ({len(removed):,} exact duplicates removed first)")
    print(f"{'step':<40}{'tunebook':>12}{'reference':>16}")
    print(f"{'exact duplicates + conflicts':<40}{cleaned - started:>11.1f}s")
    print(f"{'full audit (near dups, suspects, lengths)':<40}{finished - cleaned:>11.1f}s")
    print(f"{'total':<40}{finished - started:>11.1f}s{'target < 60 s':>16}")
    extrapolated = exact_seconds * (len(kept) / 2000) ** 2
    print(f"{'near dups, 2,000-example sample':<40}{'':>12}{exact_seconds:>15.1f}s  (exact all-pairs)")
    print(f"{'exact all-pairs extrapolated to N':<40}{'':>12}{extrapolated / 3600:>15.1f}h")
    print(f"LSH recall vs exact on the sample: {recall:.3f} ({len(found_pairs & truth)}/{len(truth)} pairs)")
    print("findings:", found.summary)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
