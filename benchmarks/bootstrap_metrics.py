"""Benchmark: the bootstrap interval of a classification variant, scikit-learn's metrics against tunebook's own.

Run:  .venv/bin/python benchmarks/bootstrap_metrics.py [RESAMPLES]

02 and 04 put a percentile-bootstrap interval on every variant's headline metrics: one full metrics call per
resample (500 by default). The triage job's 6 labels on a test split of 72 tickets, predictions drawn at random.
Reference: scikit-learn's `precision_recall_fscore_support`, `f1_score` (macro, weighted) and `confusion_matrix`,
which tunebook called until its per-call input checks made the test suite three times slower.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook.card import schema as job  # noqa: E402
from tunebook.card.tasks.base import label_figures  # noqa: E402
from tunebook.scoring import stats  # noqa: E402


def with_scikit_learn(labels: list[str], y_true: list[str], y_pred: list[str]) -> None:
    """The figures the way tunebook computed them before (four scikit-learn calls)."""
    precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    confusion_matrix(y_true, y_pred, labels=labels)


def main(resamples: int = 500) -> None:
    card = job.load_job_card(ROOT / "examples" / "support_triage" / "job.yaml")
    labels = card.label_names
    rng = np.random.default_rng(0)
    n = 72
    predictions = pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "text": ["ticket"] * n,
            "target": rng.choice(labels, n),
            "prediction": rng.choice(labels, n),
            "tags": [""] * n,
        }
    )
    draws = [predictions.iloc[rng.integers(0, n, n)] for _ in range(resamples)]
    started = time.perf_counter()
    for sample in draws:
        with_scikit_learn(labels, sample["target"].tolist(), sample["prediction"].tolist())
    reference = time.perf_counter() - started
    started = time.perf_counter()
    for sample in draws:
        label_figures(labels, sample["target"].tolist(), sample["prediction"].tolist())
    ours = time.perf_counter() - started
    started = time.perf_counter()
    stats.bootstrap(card, predictions, resamples=resamples)
    whole = time.perf_counter() - started
    print(f"{resamples} resamples of {n} predictions, {len(labels)} labels")
    print(f"{'':32}{'seconds':>10}{'ms / call':>12}")
    print(f"{'scikit-learn (reference)':32}{reference:>10.2f}{1000 * reference / resamples:>12.2f}")
    print(f"{'tunebook label_figures':32}{ours:>10.2f}{1000 * ours / resamples:>12.2f}")
    print(f"{'stats.bootstrap, all metrics':32}{whole:>10.2f}{1000 * whole / resamples:>12.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
