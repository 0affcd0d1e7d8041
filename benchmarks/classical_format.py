"""Benchmark: the classical model stored as a joblib pickle (before) and in tunebook's .npz format (now), side by side.

skops is an extra row when it is installed (tunebook no longer depends on it).

Run:  .venv/bin/python benchmarks/classical_format.py [--loads 20] [--cold 3] [--folder DIR]

Fits the classical model on the bundled support-triage tickets (every valid row), stores it each way, then prints for
each format the size on disk, the median time of ``--loads`` loads in this (warm) process, and whether predict_proba
on every ticket is identical to the in-memory model's. The tunebook load is ``load_classical_file`` (the checks, then
the rebuild of the scikit-learn objects from the arrays). A cold figure follows for joblib and the tunebook format:
the median wall time of ``--cold`` fresh ``python -c`` processes that import tunebook.modeling.classical and load the file,
which is what a served or released model pays on start (interpreter start, imports and load together). The skops
row is a plain ``skops.io.dump`` of the pipeline, loaded trusting the types it holds (the file was written here).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook.card import schema as job  # noqa: E402
from tunebook.data import examples as data  # noqa: E402
from tunebook.modeling.classical import ClassicalModel, fit_classical, load_classical_file, save_classical  # noqa: E402

COLD_LOADS = {
    "joblib (pickle)": "import joblib, tunebook.modeling.classical; joblib.load({path!r})",
    "tunebook .npz": "from tunebook.modeling.classical import load_classical_file; load_classical_file({path!r})",
    "skops.io.load": "import skops.io, tunebook.modeling.classical; "
    "skops.io.load({path!r}, trusted=skops.io.get_untrusted_types(file={path!r}))",
}


def median_seconds(load, loads: int) -> tuple[float, object]:
    """The median wall time of ``loads`` calls of ``load``, and the last result."""
    times = []
    for _ in range(loads):
        started = time.perf_counter()
        found = load()
        times.append(time.perf_counter() - started)
    return statistics.median(times), found


def cold_seconds(code: str, runs: int) -> float:
    """The median wall time of ``runs`` fresh Python processes running ``code``."""
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r}); {code}"
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20, help="loads timed per format (the median is printed)")
    parser.add_argument("--cold", type=int, default=3, help="fresh processes timed per format (the median is printed)")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the files (default: a temp folder)")
    args = parser.parse_args()

    import joblib

    try:
        import skops.io
    except ImportError:
        skops = None

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
    stored = save_classical(model, folder / "model.npz")
    formats = [
        ("joblib (pickle)", pickled, lambda: joblib.load(pickled)),
        ("tunebook .npz", stored, lambda: load_classical_file(stored)),
    ]
    if skops is not None:
        skopsed = folder / "model.skops"
        skops.io.dump(model.pipeline, skopsed)
        trusted = skops.io.get_untrusted_types(file=skopsed)  # the pipeline's own types: this file was written here
        formats.append(
            (
                "skops.io.load",
                skopsed,
                lambda: ClassicalModel(skops.io.load(skopsed, trusted=trusted), model.choices, model.cv),
            )
        )

    rows = []
    for name, path, load in formats:
        seconds, loaded = median_seconds(load, args.loads)
        same = "yes" if np.array_equal(loaded.predict_proba(texts), expected) else "NO"
        cold = f"{cold_seconds(COLD_LOADS[name].format(path=str(path)), args.cold):.2f}"
        rows.append((name, path.stat().st_size, seconds, same, cold))

    print(f"{len(train)} tickets, {len(card.choices)} labels; fit in {fit_seconds:.1f} s (cv: {model.cv})")
    print(
        f"{'':22}{'size (KiB)':>12}{f'load ms (median of {args.loads})':>30}{'identical predict_proba':>26}"
        f"{f'cold s (median of {args.cold})':>26}"
    )
    for name, size, seconds, same, cold in rows:
        print(f"{name:22}{size / 1024:>12.1f}{1000 * seconds:>30.1f}{same:>26}{cold:>26}")
    if skops is None:
        print("skops is not installed: no skops row")
    print(f"cold: a fresh `python -c` that imports tunebook.modeling.classical and loads the file; files in {folder}")


if __name__ == "__main__":
    main()
