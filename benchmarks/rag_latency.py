"""Benchmark: the latency of one answer, one request at a time, for each arm of a job answered from documents: the
base model with retrieved passages (RAG, 02's `rag` variant), the document-blind adapter, and the hybrid adapter with
retrieved passages, as a release serves them (adapters merged into the base; the system prompt's key/value cache
computed once per loaded model).

Run:  .venv/bin/python benchmarks/rag_latency.py --run RUN_DIR [--questions 20] [--threads 2] [--base-model bundled]

RUN_DIR: a run folder of a knowledge job after 03 (e.g. the help-centre example's). Each arm answers the first
--questions test questions one at a time, greedily, within its own answer budget (the one it was evaluated with).
Retrieval (the index of the run's documents, the retriever 02 chose) is timed on its own and is part of the
end-to-end figure. Latency grows with the tokens an answer takes, so their mean is shown beside it.
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

from tunebook.core.runfolder import RunFolder, read_manifest  # noqa: E402
from tunebook.knowledge.context import load_index  # noqa: E402
from tunebook.modeling import (  # noqa: E402
    decoding,  # noqa: E402
    models,
    predict,
)
from tunebook.modeling.prompts import encode_target  # noqa: E402


def timed(model, tokenizer, card, frame, index, budget: int) -> dict:
    """One request at a time: end-to-end and retrieval milliseconds per question, and answer tokens."""
    prefix = decoding.PromptPrefix(model, tokenizer, card)
    total, retrieval, tokens = [], [], []
    for i in range(len(frame)):
        request = frame.iloc[i : i + 1]
        began = time.perf_counter()
        if index is not None:
            request = index.attach(request)
            retrieval.append((time.perf_counter() - began) * 1000)
        answer = predict.predict(model, tokenizer, card, request, 1, False, max_new_tokens=budget, prefix=prefix)
        total.append((time.perf_counter() - began) * 1000)
        tokens.append(len(encode_target(tokenizer, answer["prediction"].iloc[0])))
    return {
        "p50 ms": np.percentile(total, 50),
        "p95 ms": np.percentile(total, 95),
        "retrieval p50 ms": np.percentile(retrieval, 50) if retrieval else None,
        "answer tokens (mean)": float(np.mean(tokens)),
        "ms per answer token": float(np.sum(total) / np.sum(tokens)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run folder of a knowledge job after 03")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-model", default="bundled", help="the base model the run was trained on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = RunFolder(Path(args.run))
    card, test = run.read_job_card(), run.read_splits()["test"].head(args.questions)
    index = load_index(run.knowledge_index)
    base = models.resolve_base_model(args.base_model)
    rag_budget = run.read_system(run.variant_system("rag")).answer_budget
    arms = [("base model + passages (rag)", None, index, rag_budget)]
    for label, folder, arm_index in (
        ("document-blind adapter", run.blind_adapter_dir, None),
        ("hybrid adapter + passages", run.adapter_dir, index),
    ):
        if (folder / "adapter_config.json").is_file():  # trained (a folder of checkpoints alone is not)
            arms.append((label, folder, arm_index, None))
    rows = {}
    for label, folder, arm_index, budget in arms:
        if folder is None:
            model, tokenizer = predict.load_for_inference(base)
        else:
            model, tokenizer = predict.load_for_serving(base, folder, read_manifest(folder))
        budget = budget or predict.answer_budget(tokenizer, run.read_splits()["train"]["target"])
        rows[label] = timed(model, tokenizer, card, test, arm_index, budget)
        print(f"  {label}: {rows[label]}", file=sys.stderr, flush=True)
    print(f"\n{len(test)} test questions of {card.name}, one at a time, {args.threads} threads")
    print(f"{'arm':<30}{'p50 ms':>9}{'p95 ms':>9}{'retrieval p50 ms':>18}{'answer tokens':>15}{'ms/token':>10}")
    for label, row in rows.items():
        retrieval = f"{row['retrieval p50 ms']:.1f}" if row["retrieval p50 ms"] is not None else "-"
        print(
            f"{label:<30}{row['p50 ms']:>9.0f}{row['p95 ms']:>9.0f}{retrieval:>18}"
            f"{row['answer tokens (mean)']:>15.1f}{row['ms per answer token']:>10.1f}"
        )


if __name__ == "__main__":
    main()
