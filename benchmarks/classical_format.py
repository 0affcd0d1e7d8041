"""Benchmark: the classical model stored as a joblib pickle (before) and with skops (now), side by side.

Run:  .venv/bin/python benchmarks/classical_format.py [--loads 20] [--folder DIR]

Fits the classical model on the bundled support-triage tickets (every valid row), stores it both ways, then prints for
each format the size on disk, the median time of ``--loads`` loads, and whether predict_proba on every ticket is
identical to the in-memory model's. The skops load is tunebook's own (``load_classical_file``: the check for
untrusted types, then the load); the plain ``skops.io.load`` is shown too. Importing skops the first time in a
process costs extra, printed on its own line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook import data, job  # noqa: E402
from tunebook.classical import (  # noqa: E402
    TRUSTED_TYPES,
    ClassicalModel,
    classical_sidecar,
    fit_classical,
    load_classical_file,
    save_classical,
)


def median_seconds(load, loads: int) -> tuple[float, object]:
    """The median wall time of ``loads`` calls of ``load``, and the last result."""
    times = []
    for _ in range(loads):
        started = time.perf_counter()
        found = load()
        times.append(time.perf_counter() - started)
    return statistics.median(times), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20, help="loads timed per format (the median is printed)")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the files (default: a temp folder)")
    args = parser.parse_args()

    started = time.perf_counter()
    import joblib
    import skops.io

    import_seconds = time.perf_counter() - started

    card = job.load_job_card(ROOT / "examples" / "support_triage" / "job.yaml")
    examples, _ = data.load_examples(card)
    train = examples[examples["text"].str.strip() != ""].reset_index(drop=True)
    started = time.perf_counter()
    model = fit_classical(card, train, seed=0)
    fit_seconds = time.perf_counter() - started
    texts = train["text"].tolist()
    expected = model.predict_proba(texts)

    folder = args.folder or Path(tempfile.mkdtemp(prefix="classical-format-"))
    folder.mkdir(parents=True, exist_ok=True)
    pickled = folder / "model.joblib"
    joblib.dump(model, pickled)
    stored = save_classical(model, folder / "model.skops")

    skops_size = stored.stat().st_size + classical_sidecar(stored).stat().st_size
    rows = []
    for name, size, load in (
        ("joblib (pickle)", pickled.stat().st_size, lambda: joblib.load(pickled)),
        ("skops, load_classical_file", skops_size, lambda: load_classical_file(stored)),
        (
            "skops.io.load (no check)",
            skops_size,
            lambda: ClassicalModel(skops.io.load(stored, trusted=list(TRUSTED_TYPES)), model.choices, model.cv),
        ),
    ):
        seconds, loaded = median_seconds(load, args.loads)
        rows.append((name, size, seconds, "yes" if np.array_equal(loaded.predict_proba(texts), expected) else "NO"))

    print(f"{len(train)} tickets, {len(card.choices)} labels; fit in {fit_seconds:.1f} s (cv: {model.cv})")
    print(f"first import of joblib + skops.io in this process: {import_seconds:.2f} s")
    print(f"{'':28}{'size (KiB)':>12}{f'load ms (median of {args.loads})':>30}{'identical predict_proba':>26}")
    for name, size, seconds, same in rows:
        print(f"{name:28}{size / 1024:>12.1f}{1000 * seconds:>30.1f}{same:>26}")
    print(f"files in {folder} (skops size includes the {classical_sidecar(stored).name} sidecar)")


if __name__ == "__main__":
    main()
