"""Benchmark: a monitoring pass over an inference log of 100,000 predictions (target: under 30 s on 2 CPU cores).

Run:  .venv/bin/python benchmarks/monitor_100k.py [N]

The log is written from the bundled triage traffic (texts repeated, answers and probabilities drawn at random) the
way a served model writes it; the reference is the classical model's test predictions. Timed: reading and
validating every line, then every default alert rule on its window (the latest 500 predictions), then the same
signals on the whole log as one window (the worst case a card's `monitoring.rules` can ask for).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook.card import schema as job  # noqa: E402
from tunebook.data import examples as data  # noqa: E402
from tunebook.data import splits as dataset  # noqa: E402
from tunebook.modeling import (  # noqa: E402
    classical,  # noqa: E402
    predict,
)
from tunebook.monitor import signals as monitor  # noqa: E402
from tunebook.serving import inference_log  # noqa: E402


def write_log(path: Path, card: job.JobCard, n: int, seed: int = 0) -> None:
    """``n`` logged predictions of version 1, in batches of 1,000 lines."""
    texts = pd.read_csv(ROOT / "examples" / "support_triage" / "traffic" / "in_distribution.csv")["text"].tolist()
    rng = np.random.default_rng(seed)
    for start in range(0, n, 1000):
        size = min(1000, n - start)
        probs = rng.dirichlet(np.ones(len(card.choices)) * 0.5, size)
        answers = pd.DataFrame({"id": [str(start + i) for i in range(size)]})
        answers["prediction"] = np.array(card.choices)[probs.argmax(axis=1)]
        answers["confidence"] = probs.max(axis=1)
        for j, choice in enumerate(card.choices):
            answers[f"p_{choice}"] = probs[:, j]
        picked = [texts[i] for i in rng.integers(0, len(texts), size)]
        inference_log.append(path, inference_log.log_records(card.name, "1", answers, picked, 40.0))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    card = job.load_job_card(ROOT / "examples" / "support_triage" / "job.yaml")
    splits = dataset.split(data.load_examples(card)[0], card)
    model = classical.fit_classical(card, splits["train"])
    test = splits["test"]
    reference = monitor.reference_from(
        card, predict.answer_choices(None, None, card, test, model.predict_proba(test["text"].tolist()))
    )
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "log.jsonl"
        began = time.perf_counter()
        write_log(log, card, n)
        written = time.perf_counter() - began
        began = time.perf_counter()
        frame, problems = inference_log.read_log(log)
        read = time.perf_counter() - began
        began = time.perf_counter()
        readings = monitor.readings(card, reference, frame)
        rules = time.perf_counter() - began
        began = time.perf_counter()
        whole = monitor.measure(card, reference, monitor.window_frame(frame, card, len(frame)))
        everything = time.perf_counter() - began
    print(f"inference log of {len(frame):,} predictions ({len(problems)} bad lines); written in {written:.1f} s")
    print(f"{'step':44} {'seconds':>8}")
    print(f"{'read and validate every line':44} {read:8.1f}")
    print(f"{'default rules (latest 500 each)':44} {rules:8.1f}")
    print(f"{'every signal on the whole log as one window':44} {everything:8.1f}")
    print(f"{'total: read + default rules':44} {read + rules:8.1f}   reference: under 30 s on 2 cores (issue 14)")
    fired = [r.signal for r in readings if r.fired]
    print(f"fired on random answers: {', '.join(fired) or 'none'}; whole-log text AUC {whole['text_auc'][0]:.3f}")


if __name__ == "__main__":
    main()
