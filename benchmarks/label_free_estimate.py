"""Benchmark: how close the monitor's label-free accuracy estimate comes to the true accuracy of a released model on
logged traffic with delayed labels, on the whole log and on random windows of it.

Run:  .venv/bin/python benchmarks/label_free_estimate.py --run runs/<name> [--labels FILE] [--windows 20] [--size 150]

``--run`` is a run folder that went through 06_monitor (``make demo`` makes one): its inference log holds the
bundled in-distribution traffic as the champion answered it, and its test predictions are the release's reference.
Reference (issue 14): within 0.05 of the true accuracy on in-distribution traffic. Next to each window's error the
benchmark prints how far that window's own labelled accuracy lies from the whole log's: the part of the error that
no estimator can remove, since a window of 150 tickets has only ~90 labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook.core.runfolder import RunFolder  # noqa: E402
from tunebook.data.examples import load_table  # noqa: E402
from tunebook.monitor import signals as monitor  # noqa: E402
from tunebook.scoring import drift  # noqa: E402
from tunebook.scoring.stats import fully_correct  # noqa: E402
from tunebook.serving import inference_log  # noqa: E402


def estimate_and_truth(card, reference, window, truth) -> tuple[float, float, int, int]:
    """The label-free estimate on ``window``, and its labelled rows' accuracy, right count and count."""
    estimate = drift.estimated_accuracy(reference.accuracy, float(reference.confidence.mean()), window["confidence"])
    labelled = monitor.with_labels(card, window, truth)
    right = int(np.sum(fully_correct(card, labelled)))
    return estimate, right / max(1, len(labelled)), right, len(labelled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a run folder that went through 06_monitor")
    parser.add_argument("--log", help="the inference log (default: the run's monitoring/inference_log.jsonl)")
    parser.add_argument(
        "--labels", default=str(ROOT / "examples" / "support_triage" / "traffic" / "in_distribution_labels.csv")
    )
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    run = RunFolder(Path(options.run))
    card = run.read_job_card()
    reference = monitor.reference_from(card, run.read_predictions(run.tuned_predictions))
    logged, problems = inference_log.read_log(options.log or run.inference_log)
    window = monitor.window_frame(logged, card, len(logged))
    truth = monitor.checked_labels(card, load_table(options.labels), options.labels)
    print(
        f"reference: {len(reference.texts)} test tickets, accuracy {reference.accuracy:.3f}, mean confidence "
        f"{reference.confidence.mean():.3f}; log: {len(window)} predictions ({len(problems)} unreadable lines)"
    )
    estimate, accuracy, right, n = estimate_and_truth(card, reference, window, truth)
    low, high = binomtest(right, n).proportion_ci(0.95, method="wilson")
    print(
        f"whole log: estimate {estimate:.3f}, true accuracy {accuracy:.3f} [{low:.3f}, {high:.3f}] on {n} labels, "
        f"error {estimate - accuracy:+.3f} (reference: within 0.05)"
    )
    rng = np.random.default_rng(options.seed)
    errors, strays = [], []
    for _ in range(options.windows):
        rows = window.iloc[np.sort(rng.choice(len(window), options.size, replace=False))].reset_index(drop=True)
        est, acc, _, _ = estimate_and_truth(card, reference, rows, truth)
        errors.append(est - acc)
        strays.append(acc - accuracy)
    errors, strays = np.array(errors), np.array(strays)
    print(f"{options.windows} windows of {options.size}:")
    print(f"{'':40} {'mean':>7} {'min':>7} {'max':>7}  within 0.05")
    for name, values in (
        ("estimate - window's true accuracy", errors),
        ("window's - whole log's true accuracy", strays),
    ):
        inside = int(np.sum(np.abs(values) <= 0.05))
        print(f"{name:40} {values.mean():+7.3f} {values.min():+7.3f} {values.max():+7.3f}  {inside}/{len(values)}")


if __name__ == "__main__":
    main()
