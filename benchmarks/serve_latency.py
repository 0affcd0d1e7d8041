"""Benchmark: serving latency per support-triage ticket on this machine, one request at a time and in batches,
without and with the system prompt's key/value cache computed once per loaded model (``decoding.PromptPrefix``).

Run:  .venv/bin/python benchmarks/serve_latency.py [--tickets 40] [--threads 2] [--run runs/<name>]

Reference: p50 ~670 ms per ticket on 2 CPU cores, one at a time, before the prefix cache (issue 14); goal p50
<= 150 ms with the same answers. The first table is the bundled base model with the job's prompt; answers with and
without the cache must be identical. With ``--run`` (a run folder with a trained adapter, e.g. from ``make demo``)
a second table times that adapter as 04 evaluated it (``predict.load_trained``: a quantized base plus LoRA layers)
and as a release serves it (``predict.load_for_serving``: merged into float32 weights), on its test split.
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

from tunebook.card import schema as job  # noqa: E402
from tunebook.core.runfolder import RunFolder  # noqa: E402
from tunebook.data import examples as data  # noqa: E402
from tunebook.modeling import decoding, models, predict  # noqa: E402


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


def table(title: str, model_rows: list[tuple[str, object, bool]], tokenizer, card, frame) -> None:
    """Time each (name, model, prefix cache?) one at a time and in batches of 8; print p50 / p95 and agreement."""
    rows, reference = [], None
    for name, model, use_prefix in model_rows:
        prefix = decoding.PromptPrefix(model, tokenizer, card) if use_prefix else None
        timed(model, tokenizer, card, frame.head(3), 1, prefix)  # warm-up
        for batch in (1, 8):
            latencies, answers = timed(model, tokenizer, card, frame, batch, prefix)
            reference = reference or answers
            same = sum(a == b for a, b in zip(answers, reference))
            label = f"{name}, {'one at a time' if batch == 1 else 'batches of 8'}"
            rows.append((label, np.percentile(latencies, 50), np.percentile(latencies, 95), same))
    print(title)
    print(f"{'':58} {'p50 ms':>8} {'p95 ms':>8}  same answers as the first row")
    for name, p50, p95, same in rows:
        print(f"{name:58} {p50:8.0f} {p95:8.0f}  {same}/{len(frame)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tickets", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", help="a run folder with a trained adapter: also time it as evaluated and as served")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    card = job.load_job_card(ROOT / "examples" / "support_triage" / "job.yaml")
    frame = data.load_examples(card)[0].head(options.tickets)
    base = models.resolve_base_model("bundled")
    model, tokenizer = predict.load_for_inference(base)
    began = time.perf_counter()
    prefix = decoding.PromptPrefix(model, tokenizer, card)
    print(
        f"system prompt {len(prefix.tokens)} tokens, its cache computed once in "
        f"{(time.perf_counter() - began) * 1000:.0f} ms; {options.threads} threads"
    )
    rows = [("base model, no prefix cache", model, False), ("base model, prefix cache", model, True)]
    table(f"support triage, bundled base model, {len(frame)} tickets", rows, tokenizer, card, frame)
    if options.run:
        run = RunFolder(options.run)
        manifest, card = run.read_manifest(), run.read_job_card()
        test = run.read_splits()["test"].head(options.tickets)
        evaluated, _ = predict.load_trained(base, run.adapter_dir, manifest)
        served, _ = predict.load_for_serving(base, run.adapter_dir, manifest)
        rows = [
            (f"adapter as evaluated ({manifest.quantization} base + LoRA)", evaluated, True),
            ("adapter as served (merged, float32)", served, True),
        ]
        table(f"\n{run.root.name}: trained adapter, {len(test)} test tickets", rows, tokenizer, card, test)
    print("\nreference: p50 ~670 ms one at a time before the cache (issue 14); goal p50 <= 150 ms")


if __name__ == "__main__":
    main()
