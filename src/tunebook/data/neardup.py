"""Near duplicates at scale: word-shingle MinHash signatures, locality-sensitive hashing for candidate pairs, exact
Jaccard on the candidates, and groups of near-same texts (kept together when splitting)."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd

from tunebook.data.examples import normalise

_PRIME = (1 << 31) - 1  # Mersenne prime: a * x stays below 2^62, exact in uint64
_WORD = re.compile(r"\w+")


def shingles(text: str, size: int = 3) -> np.ndarray:
    """Hashes of the word ``size``-grams of the normalised text (the whole text when shorter)."""
    words = _WORD.findall(normalise(text))
    grams = [" ".join(words[i : i + size]) for i in range(max(1, len(words) - size + 1))]
    return np.unique(np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams)))


def minhash_signatures(sets: list[np.ndarray], num_perm: int = 64, seed: int = 0) -> np.ndarray:
    """MinHash signatures, shape (len(sets), num_perm), computed for all sets at once."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64)
    b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64)
    lengths = np.array([len(s) for s in sets])
    flat = (np.concatenate(sets) if sets else np.zeros(0, dtype=np.uint64)) % np.uint64(_PRIME)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(sets) else np.zeros(0, dtype=np.int64)
    signatures = np.empty((len(sets), num_perm), dtype=np.uint64)
    for j in range(num_perm):
        permuted = (a[j] * flat + b[j]) % np.uint64(_PRIME)
        signatures[:, j] = np.minimum.reduceat(permuted, starts) if len(flat) else 0
    return signatures


def _pair_jaccard(sets: list[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of many (i, j) pairs of shingle sets, via one sparse incidence matrix."""
    # deferred: SciPy loads only once candidate pairs are found
    from scipy.sparse import csr_matrix

    lengths = np.array([len(s) for s in sets])
    _, columns = np.unique(np.concatenate(sets), return_inverse=True)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    matrix = csr_matrix(
        (np.ones(len(columns), dtype=np.float32), columns.ravel(), indptr), shape=(len(sets), columns.max() + 1)
    )
    inter = np.asarray(matrix[pairs[:, 0]].multiply(matrix[pairs[:, 1]]).sum(axis=1)).ravel()
    return inter / (lengths[pairs[:, 0]] + lengths[pairs[:, 1]] - inter)


def lsh_rows(threshold: float, num_perm: int, miss: float = 0.01) -> int:
    """Rows per LSH band: the most selective banding that still misses a pair at ``threshold`` at most ``miss`` of the time."""
    best = 1
    for rows in range(1, num_perm + 1):
        if (1 - threshold**rows) ** (num_perm // rows) <= miss:
            best = rows
    return best


def near_duplicate_pairs(texts: list[str], threshold: float = 0.8, num_perm: int = 64, size: int = 3) -> pd.DataFrame:
    """Pairs of texts whose word-shingle Jaccard similarity is at least ``threshold`` (MinHash + LSH, not quadratic)."""
    sets = [shingles(t, size) for t in texts]
    signatures = minhash_signatures(sets, num_perm)
    rows = lsh_rows(threshold, num_perm)
    mixers = np.random.default_rng(1).integers(1, 1 << 61, rows, dtype=np.uint64)
    firsts, seconds = [], []
    for band in range(num_perm // rows):
        # one 64-bit key per row and band (wrapping arithmetic is fine for bucketing)
        keys = (signatures[:, band * rows : (band + 1) * rows] * mixers).sum(axis=1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, len(keys)])
        for start, count in zip(starts[sizes > 1], sizes[sizes > 1]):
            members = np.sort(order[start : start + count])
            if count > 200:
                # All pairs of a huge bucket would be quadratic: compare each member with the first one only.
                # Groups (for leak-free splits) stay connected; some pairs inside the bucket go unreported.
                firsts.append(np.full(count - 1, members[0]))
                seconds.append(members[1:])
                continue
            i, j = np.triu_indices(count, k=1)
            firsts.append(members[i])
            seconds.append(members[j])
    if not firsts:
        return pd.DataFrame(columns=["i", "j", "similarity"])
    pairs = np.unique(np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1), axis=0)
    similarity = _pair_jaccard(sets, pairs)
    keep = similarity >= threshold
    return pd.DataFrame({"i": pairs[keep, 0], "j": pairs[keep, 1], "similarity": similarity[keep]})


def groups_from_pairs(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """Connected components of the pair graph: one group id per item (union-find)."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in zip(pairs["i"], pairs["j"]):
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])
