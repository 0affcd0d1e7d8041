"""Benchmark: serving latency per support-triage ticket on this machine, one request at a time and in batches,
without and with the system prompt's key/value cache computed once per loaded model (``decoding.PromptPrefix``).

Run:  .venv/bin/python benchmarks/serve_latency.py [--tickets 40] [--threads 2]

Reference: p50 ~670 ms per ticket on 2 CPU cores, one at a time, before the prefix cache (issue 14); goal p50
<= 150 ms with the same answers. The model is the bundled base model with the job's prompt (a LoRA adapter adds
little to a forward pass); answers with and without the cache must be identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook import data, decoding, job, models, predict  # noqa: E402


def timed(model, tokenizer, card, frame, batch: int, prefix) -> tuple[list[float], list[str]]:
    """Per-ticket latency (ms) of answering ``frame`` in requests of ``batch`` tickets, and the answers."""
    latencies, answers = [], []
    for start in range(0, len(frame), batch):
        request = frame.iloc[start : start + batch]
        began = time.perf_counter()
        result = predict.predict(model, tokenizer, card, request, batch, progress=False, prefix=prefix)
        per_ticket = (time.perf_counter() - began) * 1000 / len(request)
        latencies += [per_ticket] * len(request)
        answers += result["prediction"].tolist()
    return latencies, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tickets", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    card = job.load_job_card(ROOT / "examples" / "support_triage" / "job.yaml")
    frame = data.load_examples(card)[0].head(options.tickets)
    model, tokenizer = predict.load_for_inference(models.resolve_base_model("bundled"))
    began = time.perf_counter()
    prefix = decoding.PromptPrefix(model, tokenizer, card)
    prefix_ms = (time.perf_counter() - began) * 1000
    timed(model, tokenizer, card, frame.head(3), 1, None)  # warm-up
    rows, reference = [], None
    for name, batch, use_prefix in (
        ("one at a time, no prefix cache", 1, False),
        ("one at a time, prefix cache", 1, True),
        ("batches of 8, no prefix cache", 8, False),
        ("batches of 8, prefix cache", 8, True),
    ):
        latencies, answers = timed(model, tokenizer, card, frame, batch, prefix if use_prefix else None)
        reference = reference or answers
        same = sum(a == b for a, b in zip(answers, reference))
        rows.append((name, np.percentile(latencies, 50), np.percentile(latencies, 95), same))
    print(
        f"support triage, bundled model, {len(frame)} tickets, {options.threads} threads; system prompt "
        f"{len(prefix.tokens)} tokens, its cache computed once in {prefix_ms:.0f} ms"
    )
    print(f"{'':34} {'p50 ms':>8} {'p95 ms':>8}  same answers as the first row")
    for name, p50, p95, same in rows:
        print(f"{name:34} {p50:8.0f} {p95:8.0f}  {same}/{len(frame)}")
    print("reference: p50 ~670 ms one at a time before the cache (issue 14); goal p50 <= 150 ms")


if __name__ == "__main__":
    main()
