"""Benchmark: peak memory and speed of 03's training steps on the triage and tool examples (the bundled model, NF4 +
LoRA, the recipe's defaults: batch size 8, MAX_LENGTH 2048, GENERAL_MIX 0.5), next to the figures recorded before.

Run:  .venv/bin/python benchmarks/training_memory.py [--steps 6] [--examples support_triage,support_tools]
      [--budget MB] [--packing-from GIT_REV] [--batches 0,1,2] [--train MAX_STEPS]

Each example runs in its own process (peak memory is a per-process high-water mark, as in the manifest's
peak_memory_mb: ``ru_maxrss``, model loading included). The training features are built as train.py builds them
(job examples, then general replay examples), the batches are the ones the seeded length-grouped sampler forms in
the first epoch, and each step is what CompletionOnlyTrainer runs: ``packing.completion_loss`` with the trainer's
activation budget, backward, an AdamW step. The steps measured: the batch with the longest row (it sets the peak),
the batch mixing the most groups (where the groups' incomplete batches meet), then the epoch's first batches, up to
--steps in all; or the batches --batches names (indices in the first epoch's order), to compare runs on the same
batches.
An example may also be a knowledge job's run folder after 02 (e.g. the help-centre example's): its steps are the
hybrid adapter's, with the retrieved passages in each prompt as 03 trains it.
--budget overrides packing.ACTIVATION_BUDGET_MB (0: no budget, every layer keeps its activations).
--packing-from REV measures tunebook.train.packing as it was at a git revision (e.g. the commit before this change) on
the same batches. Its peak on the tool example's mixed batch reached 22 GB on a 24 GB machine: with less free, name
--batches without it.
--train MAX_STEPS runs 03's training itself instead (train.train_adapter with the recipe's defaults and MAX_STEPS;
-1: the whole recipe, two epochs), validation passes and the up-front memory check included, and reports its
manifest: peak_memory_mb (the figure 03 records) and steps per second of training wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# 03's manifests before this change (2 CPU cores, 24 GB): the triage example's peak memory, and the tool example's
REFERENCE = {"support_triage": "3.6-3.8 GB", "support_tools": "22.2 GB"}


def load_packing(revision: str | None):
    """tunebook.train.packing as it is, or as it was at a git revision."""
    if revision is None:
        from tunebook.train import packing

        return packing
    source = subprocess.run(
        ["git", "show", f"{revision}:src/tunebook/packing.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "packing_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("packing_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(example: str, steps: int, budget: float | None, revision: str | None, picked: str | None) -> dict:
    """Train ``steps`` steps of ``example`` in this process; its peak memory and step times."""
    import torch

    from tunebook.card import schema as job
    from tunebook.data import examples as data
    from tunebook.data import splits as dataset
    from tunebook.modeling import models
    from tunebook.train import step as train
    from tunebook.train.recipe import TrainConfig

    packing = load_packing(revision)
    if Path(example).is_dir():  # a knowledge job's run folder after 02: the hybrid adapter's prompts, as 03 makes them
        from tunebook.core.runfolder import RunFolder
        from tunebook.train.raft import raft_frame

        run = RunFolder(Path(example))
        card, splits = run.read_job_card(), run.read_splits()
        index = train.training_index(run, card)
        splits = {"train": raft_frame(card, splits["train"], index), "val": index.attach(splits["val"])}
    else:
        card = job.load_job_card(ROOT / "examples" / example / "job.yaml")
        kept, _ = data.clean(*data.load_examples(card))
        splits = dataset.split(kept, card)
    base_model = models.resolve_base_model("bundled")
    tokenizer = models.load_tokenizer(base_model)
    config = TrainConfig()
    features, _, _ = train._features(tokenizer, card, splits, base_model, config)
    model = train.prepare_model(base_model, config).train()
    lengths, groups = [len(f["input_ids"]) for f in features], [f.get("group", 0) for f in features]
    sampler = packing.SeededLengthGroupedSampler(config.batch_size, lengths, config.seed, groups)
    order = list(sampler)
    batches = [
        [features[i] for i in order[start : start + config.batch_size]]
        for start in range(0, len(order), config.batch_size)
    ]
    # the layout 03 picks (packed or padded, by cost), where this revision of packing chooses
    costed = {"pair_cost": packing.pair_cost(model)} if hasattr(packing, "pair_cost") else {}
    collate = packing.CompletionCollator(tokenizer.pad_token_id, **costed)
    # the examples per forward pass 03 plans (the rest of each batch accumulated), where this revision plans them
    micro, planned = (
        train.memory_plan(model, collate, features, config) if revision is None else (len(batches[0]), None)
    )
    collated = [[collate(b[i : i + micro]) for i in range(0, len(b), micro)] for b in batches]
    longest = max(range(len(collated)), key=lambda i: max(c["input_ids"].numel() for c in collated[i]))
    mixed = max(range(len(batches)), key=lambda i: (len({f.get("group", 0) for f in batches[i]}), i))
    chosen = list(dict.fromkeys([longest, mixed, *range(len(collated))]))[:steps]
    if picked:
        chosen = [int(i) for i in picked.split(",")]

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.effective_learning_rate
    )
    if budget is None:
        budget = planned or getattr(packing, "ACTIVATION_BUDGET_MB", None)
    takes_budget = "activation_budget_mb" in inspect.signature(packing.completion_loss).parameters
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for index in chosen:
        passes = collated[index]
        batch = max(passes, key=lambda c: c["input_ids"].numel())
        tokens = batch["input_ids"].numel()
        started = time.perf_counter()
        for part in passes:
            loss = (
                packing.completion_loss(model, part, budget or None)
                if takes_budget
                else packing.completion_loss(model, part)
            )
            (loss / len(passes)).backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds = time.perf_counter() - started
        recomputed = packing.layers_to_checkpoint(model, tokens, budget or None) if takes_budget else 0
        rows.append(
            {
                "batch": index,
                "layout": "packed" if "segments" in batch else "padded",
                "shape": list(batch["input_ids"].shape),
                "passes": len(passes),
                "tokens": tokens,
                "recomputed_layers": recomputed,
                "seconds": round(seconds, 2),
                "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
        print(f"  {example} {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    total = sum(r["seconds"] for r in rows)
    return {
        "example": Path(example).name,
        "packing": revision or "working tree",
        "budget_mb": budget or None,
        "features": len(features),
        "batches_per_epoch": len(batches),
        "longest_row": max(c["input_ids"].numel() for c in collated[longest]),
        "examples_per_pass": micro,
        "loaded_mb": round(loaded_mb),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "steps": len(rows),
        "steps_per_s": round(len(rows) / total, 4),
        "steps_detail": rows,
    }


def run_training(example: str, max_steps: int) -> dict:
    """03's training of ``example`` in this process (a throwaway adapter folder); what its manifest records."""
    from tunebook.card import schema as job
    from tunebook.data import examples as data
    from tunebook.data import splits as dataset
    from tunebook.modeling import models
    from tunebook.train import step as train
    from tunebook.train.recipe import TrainConfig

    card = job.load_job_card(ROOT / "examples" / example / "job.yaml")
    kept, _ = data.clean(*data.load_examples(card))
    splits = dataset.split(kept, card)
    base_model = models.resolve_base_model("bundled")
    with tempfile.TemporaryDirectory() as folder:
        result = train.train_adapter(card, splits, base_model, TrainConfig(max_steps=max_steps), folder, "benchmark")
    m = result.manifest
    return {
        "example": example,
        "packing": "03 (train_adapter)",
        "steps": m.steps,
        "wall_time_s": m.wall_time_s,
        "peak_mb": m.peak_memory_mb,
        "steps_per_s": round(m.steps / m.wall_time_s, 4),
        "val_loss_before": round(result.val_loss_before, 4),
        "val_loss_after": round(result.val_loss_after, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--examples", default="support_triage,support_tools")
    parser.add_argument("--budget", type=float, default=None, help="activation budget in MB (0: none)")
    parser.add_argument("--packing-from", default=None, help="git revision of src/tunebook/packing.py to measure")
    parser.add_argument("--batches", default=None, help="indices of the batches to step on, e.g. 0,1,2")
    parser.add_argument("--train", type=int, default=None, metavar="MAX_STEPS", help="run 03's training instead")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.train is not None:
        print(json.dumps(run_training(args.child, args.train)))
        return
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.budget, args.packing_from, args.batches)))
        return
    if args.train is not None:
        results = []
        for example in args.examples.split(","):
            command = [sys.executable, __file__, "--child", example, "--train", str(args.train)]
            done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"\n{'example':<16}{'steps':>6}{'wall s':>8}{'steps/s':>9}{'peak MB':>9}  recorded before (manifest)")
        for r in results:
            print(
                f"{r['example']:<16}{r['steps']:>6}{r['wall_time_s']:>8.0f}{r['steps_per_s']:>9.3f}{r['peak_mb']:>9.0f}"
                f"  {REFERENCE.get(r['example'], '')}   (val loss {r['val_loss_before']} -> {r['val_loss_after']})"
            )
        return
    results = []
    for example in args.examples.split(","):
        command = [sys.executable, __file__, "--child", example, "--steps", str(args.steps)]
        if args.budget is not None:
            command += ["--budget", str(args.budget)]
        if args.packing_from:
            command += ["--packing-from", args.packing_from]
        if args.batches:
            command += ["--batches", args.batches]
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print()
    header = (
        f"{'example':<16}{'packing':<14}{'longest row':>12}{'loaded MB':>11}{'peak MB':>9}{'steps/s':>9}"
        f"{'s/step':>8}  recorded before (manifest)"
    )
    print(header)
    for r in results:
        print(
            f"{r['example']:<16}{r['packing'][:13]:<14}{r['longest_row']:>12}{r['loaded_mb']:>11}{r['peak_mb']:>9}"
            f"{r['steps_per_s']:>9.3f}{1 / r['steps_per_s']:>8.1f}  {REFERENCE.get(r['example'], '')}"
        )
    print()
    print(
        "per step (passes: forward passes accumulated; the longest pass's layout and shape; tokens: its row's length,"
        " or rows x width; recomputed: decoder layers checkpointed):"
    )
    for r in results:
        for s in r["steps_detail"]:
            print(
                f"  {r['example']:<16} batch {s['batch']:>3} {s.get('passes', 1)} x {s['layout']:<7}{str(s['shape']):<11} tokens "
                f"{s['tokens']:>5}  recomputed {s['recomputed_layers']:>2}  {s['seconds']:>6.2f} s  peak so far "
                f"{s['peak_mb']} MB"
            )


if __name__ == "__main__":
    main()
