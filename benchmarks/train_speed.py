"""Benchmark: training throughput of tunebook's trainer against TRL's SFTTrainer, and against the matmul ceiling.

Run:  .venv/bin/pip install "trl>=1.16,<2" && .venv/bin/python benchmarks/train_speed.py [--steps 8] [--quantization nf4]
      [--model llama-1.7b] [--tunebook-variants sdpa,sdpa+compile,flex_attention+compile]

--model bundled (default) trains the real SmolLM2-135M-Instruct; --model llama-1.7b a randomly initialised model of
SmolLM2-1.7B's shape (24 layers, hidden 2048, 32 heads) with the same tokenizer: speed needs no trained weights, and
its validation losses only compare the runs with each other. --tunebook-variants runs tunebook once per attention
implementation (sdpa, eager, flex_attention on a GPU), each with "+compile" for compiled decoder layers (COMPILE=True).

Same base model (the bundled SmolLM2-135M-Instruct, loaded the same way), same LoRA configuration (r 16, alpha 32,
all linear layers, no dropout), same support-triage training split, batch size 8, same number of optimiser steps.
Columns:
  tunebook      train.train_adapter: completion-only loss, the batch's shared prompt prefix run once, the vocabulary
                projection only on supervised positions, length-grouped batches, float32 compute on CPU.
  TRL defaults  trl.SFTTrainer with SFTConfig defaults (bf16, gradient checkpointing, lr 2e-5, ...) on a
                prompt-completion dataset rendered by the same chat template; logging_steps=1 to read token counts.
  TRL no-GC     the same with gradient_checkpointing=False (and, on a CPU, bf16=False: bfloat16 is ~10x slower on
                the CPUs here), to show how much of the difference is the defaults and how much is the method.
Each runs in its own process (peak memory is a per-process high-water mark). Step times exclude evaluation.
Validation loss: mean cross-entropy per answer token (answer + end-of-turn) on the val split, measured the same way
for every trained model. Achieved FLOP/s: the matrix-multiply FLOPs torch dispatches for one training step
(torch.utils.flop_counter), counted on an unquantized copy of the model with the same LoRA and the same batch
(bitsandbytes' 4-bit forward is a custom op the counter cannot see; the multiply work is the same), plus the attention
kernel's QK^T and PV products (torch has no formula for the CPU kernel; the one used is torch's GPU formula), divided
by the median steady step time. The ceiling is this machine's best GEMM rate in the compute dtype (fp32 on a CPU, on
shapes like the model's layers; bf16 on a GPU, including an 8192^3 product that reaches the card's peak).
Step times: the median of the steps after the first three (which carry warm-up, and compiling: the decoder layers'
graphs, FlexAttention's kernels); the first three are reported as warm-up seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunebook.card import schema as job  # noqa: E402
from tunebook.core import lineage  # noqa: E402
from tunebook.data import examples as data  # noqa: E402
from tunebook.data import splits as dataset  # noqa: E402
from tunebook.modeling import models, prompts  # noqa: E402
from tunebook.train import (  # noqa: E402
    callbacks,  # noqa: E402
    packing,
    recipe,
)
from tunebook.train import step as train  # noqa: E402

BATCH = 8
WARMUP_STEPS = 3
LARGER = {  # SmolLM2-1.7B's shape
    "llama-1.7b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        head_dim=64,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
}


def setup(model: str = "bundled"):
    """The support-triage splits and the resolved base model (the bundled one, or a random one of a larger shape)."""
    card = job.load_job_card(ROOT / "examples" / "support_triage" / "job.yaml")
    kept, _ = data.clean(*data.load_examples(card))
    return card, dataset.split(kept, card), resolve_model(model)


def resolve_model(model: str) -> str:
    """A model folder: the bundled model, or a randomly initialised model of a shape in LARGER, saved once in bf16."""
    bundled = models.resolve_base_model("bundled")
    if model == "bundled":
        return bundled
    folder = models.cache_dir() / "benchmark-models" / model
    if not (folder / "config.json").is_file():
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(bundled)
        for key, value in LARGER[model].items():
            setattr(config, key, value)
        torch.manual_seed(0)
        with torch.device(models.device()):
            random = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        random.save_pretrained(folder)
        models.load_tokenizer(bundled).save_pretrained(folder)
    return str(folder)


def matmul_ceiling(dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM rate (FLOP/s) over shapes like the model's layers, and on a GPU an 8192^3 product (its peak)."""
    dev = models.device()
    best = 0.0
    shapes = [(2048, 576, 1536), (2048, 1536, 576), (2048, 576, 576), (4096, 1024, 1024)]
    if dev.startswith("cuda"):
        shapes += [(4096, 2048, 8192), (8192, 8192, 8192)]
    for rows, inner, cols in shapes:
        a, b = torch.randn(rows, inner, dtype=dtype, device=dev), torch.randn(inner, cols, dtype=dtype, device=dev)
        for _ in range(3):
            a @ b
        repeats = 20
        _sync()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync()
        best = max(best, 2 * rows * inner * cols * repeats / (time.perf_counter() - start))
    return best


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def val_loss(model, tokenizer, card, frame) -> float:
    """Mean cross-entropy per answer token (answer + end-of-turn) over the split; full sequences, no shortcuts."""
    features = train.build_features(tokenizer, card, frame, 512, "val")
    collate = packing.CompletionCollator(tokenizer.pad_token_id, share_prefix=False)
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for start in range(0, len(features), BATCH):
            batch = collate(features[start : start + BATCH])
            n = int((batch["labels"][:, 1:] != prompts.IGNORE_INDEX).sum())
            loss = packing.completion_loss(model, {k: v.to(dev) for k, v in batch.items()})
            total, count = total + loss.item() * n, count + n
    return total / count


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and PV of the CPU flash-attention kernel: 4 * batch * heads * queries * keys * head_dim."""
    b, h, s_q, d = query_shape
    return 4 * b * h * s_q * key_shape[2] * d


def _cpu_attention_backward_flops(
    grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """dP, dQ, dK and dV: twice the forward (the same count torch uses for the GPU kernels)."""
    return 2 * _cpu_attention_flops(query_shape, key_shape, value_shape)


def step_flops(model, batch: dict, loss_fn) -> float:
    """Matrix-multiply and attention FLOPs torch dispatches for one forward and backward pass on ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    dev = next(model.parameters()).device
    aten = torch.ops.aten
    counter = FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
        },
    )
    with counter:
        loss_fn(model, {k: v.to(dev) for k, v in batch.items()}).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_mb() -> float:
    """Peak GPU memory allocated on a GPU, else the process's peak resident memory (MB)."""
    peak = lineage.peak_memory_mb()
    return peak.get("peak_gpu_memory_mb", peak["peak_memory_mb"])


class StepProfile(TrainerCallback):
    """torch.profiler over the steady steps (after the warm-up ones); writes the top operators to ``path``."""

    def __init__(self, path: Path, first: int = WARMUP_STEPS, steps: int = 5):
        self.path, self.first, self.last, self.profiler = path, first, first + steps, None

    def on_step_begin(self, args, state, control, **kwargs):
        """Start profiling at the first steady step."""
        if state.global_step == self.first:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        """Stop after the last profiled step and write the tables (by host time, and by device time on a GPU)."""
        if self.profiler is not None and state.global_step == self.last:
            _sync()
            self.profiler.__exit__(None, None, None)
            table = self.profiler.key_averages()
            text = f"{self.last - self.first} steps\n" + table.table(sort_by="self_cpu_time_total", row_limit=40)
            if torch.cuda.is_available():
                text += "\n" + table.table(sort_by="self_cuda_time_total", row_limit=25)
            self.path.write_text(text)
            self.profiler = None


def run_tunebook(
    steps: int, quantization: str, model: str = "bundled", variant: str = "sdpa", profile: Path | None = None
) -> dict:
    """Train with tunebook's trainer for ``steps`` steps; timings, tokens, FLOPs and validation loss.

    ``variant``: the attention implementation (sdpa, flex_attention, eager), with "+compile" for compiled layers.
    ``profile``: a file for the profiler's table of the steady steps (they then run slower: not for timing).
    """
    import tempfile

    card, splits, base = setup(model)
    tokenizer = models.load_tokenizer(base)
    features = train.build_features(tokenizer, card, splits["train"], 512, "train")
    order = list(packing.SeededLengthGroupedSampler(BATCH, [len(f["input_ids"]) for f in features], seed=0))
    batches = [[features[i] for i in order[k * BATCH : (k + 1) * BATCH]] for k in range(steps)]
    timer = callbacks.StepTimer()
    config = recipe.TrainConfig(
        quantization=quantization,
        max_steps=steps,
        eval_steps=steps,
        early_stopping_patience=0,
        general_mix=0.0,
        attention=variant.split("+")[0],
        compile=variant.endswith("+compile"),
    )
    with tempfile.TemporaryDirectory() as folder:
        extra = [StepProfile(profile)] if profile else []
        train.train_adapter(
            card, splits, base, config, Path(folder) / "adapter", "benchmark", callbacks=[timer, *extra]
        )
        # validation loss on sdpa, not compiled: the same numbers, without compiling for every padded batch shape
        model = train.prepare_model(
            base, recipe.TrainConfig(**{**asdict(config), "attention": "sdpa", "compile": False})
        )
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(Path(folder) / "adapter" / "adapter_model.safetensors"))
    collate = packing.CompletionCollator(tokenizer.pad_token_id)
    counted = train.prepare_model(base, recipe.TrainConfig(quantization="none", attention="sdpa"))
    counted_batches = batches[WARMUP_STEPS:][:3] or batches  # FLOPs per step vary little; three steps are enough
    flops = sum(step_flops(counted, collate(b), packing.completion_loss) for b in counted_batches) / len(
        counted_batches
    )
    computed = [collate(b)["input_ids"].numel() for b in batches]
    return {
        "step_s": timer.steps,
        "tokens": [sum(len(f["input_ids"]) for f in b) for b in batches],
        "computed_tokens": computed,
        "flops_step": flops,
        "val_loss": val_loss(model, tokenizer, card, splits["val"]),
        "peak_mb": peak_mb(),
        "settings": {"attention": config.attention, "compiled": config.compile},
    }


def run_trl(steps: int, quantization: str, no_checkpointing: bool, model: str = "bundled") -> dict:
    """Train with TRL's SFTTrainer (defaults, or without gradient checkpointing) for ``steps`` steps."""
    import tempfile

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    card, splits, base = setup(model)
    tokenizer = models.load_tokenizer(base)

    def rows(frame):
        return Dataset.from_list(
            [
                {
                    "prompt": prompts.build_messages(card, r.text),
                    "completion": [{"role": "assistant", "content": r.target}],
                }
                for r in frame.itertuples()
            ]
        )

    model = models.load_model(base, quantization)
    timer = callbacks.StepTimer()
    logged: list[dict] = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(dict(logs or {}))

    on_gpu = torch.cuda.is_available()
    extra = {"bf16": on_gpu, "gradient_checkpointing": False} if no_checkpointing else {}
    with tempfile.TemporaryDirectory() as folder:
        config = SFTConfig(
            output_dir=folder,
            max_steps=steps,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            use_cpu=not on_gpu,
            **extra,
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=rows(splits["train"]),
            processing_class=tokenizer,
            peft_config=models.lora_config(16, 32, 0.0),
            callbacks=[timer, Logs()],
        )
        settings = {
            "bf16": config.bf16,
            "gradient_checkpointing": config.gradient_checkpointing,
            "learning_rate": config.learning_rate,
            "batch_size": config.per_device_train_batch_size,
        }
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.train()
    model = trainer.model
    cumulative = [int(float(e["num_tokens"])) for e in logged if "num_tokens" in e]
    tokens = [b - a for a, b in zip([0, *cumulative[:-1]], cumulative)]

    def trl_loss(m, b):
        with torch.autocast(
            device_type="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16, enabled=settings["bf16"]
        ):
            out = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        logits = out.logits[:, :-1].float()
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"][:, 1:].flatten(), ignore_index=-100)

    counted = models.load_model(base, "none")
    from peft import get_peft_model

    counted = get_peft_model(counted, models.lora_config(16, 32, 0.0))
    counted.train()
    if settings["gradient_checkpointing"]:
        counted.gradient_checkpointing_enable()
    flops = step_flops(counted, batch, trl_loss)
    return {
        "step_s": timer.steps,
        "tokens": tokens,
        "computed_tokens": tokens,
        "flops_step": flops,
        "val_loss": val_loss(model, tokenizer, card, splits["val"]),
        "peak_mb": peak_mb(),
        "settings": settings,
    }


def in_process(function, *args) -> dict:
    """Run ``function`` in a fresh process (own peak memory, no shared state)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--quantization", default="nf4", choices=["nf4", "none"])
    parser.add_argument("--model", default="bundled", choices=["bundled", *LARGER])
    parser.add_argument(
        "--tunebook-variants",
        default="sdpa",
        help="comma-separated attention implementations (sdpa, flex_attention, eager), each with +compile or not",
    )
    parser.add_argument("--skip-trl-defaults", action="store_true")
    parser.add_argument("--skip-trl-no-gc", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        help="a folder for torch.profiler tables of each tunebook variant's steady steps (profiled steps run slower: "
        "do not quote the timings of a profiled run)",
    )
    options = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    ceiling = matmul_ceiling(dtype)
    device = torch.cuda.get_device_name() if on_gpu else models.device()
    print(
        f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{str(dtype).split('.')[-1]} matmul ceiling {ceiling / 1e12:.2f} TFLOP/s"
    )
    resolve_model(options.model)  # once, before the runs start in their own processes
    runs = {}
    for variant in options.tunebook_variants.split(","):
        profile = options.profile / f"profile-{variant.replace('+', '-')}.txt" if options.profile else None
        if profile:
            options.profile.mkdir(parents=True, exist_ok=True)
        runs[f"tunebook {variant}"] = in_process(
            run_tunebook, options.steps, options.quantization, options.model, variant, profile
        )
        report(runs, ceiling, dtype)
    if not options.skip_trl_defaults:
        runs["TRL defaults"] = in_process(run_trl, options.steps, options.quantization, False, options.model)
        report(runs, ceiling, dtype)
    if not options.skip_trl_no_gc:
        runs["TRL no-GC"] = in_process(run_trl, options.steps, options.quantization, True, options.model)
        report(runs, ceiling, dtype)
    rows = {name: figures(run, ceiling, dtype) for name, run in runs.items()}
    names = list(rows)
    reference = "TRL no-GC" if "TRL no-GC" in rows else names[-1]
    width = max(len(k) for k in rows[names[0]]) + 2
    print(
        f"\n{options.steps} steps x batch {BATCH}, support-triage train split, {options.model} model, "
        f"{options.quantization} base + LoRA r16 (all linear), on {device}"
    )
    print("".ljust(width) + "".join(n.rjust(22) for n in names) + f"   {names[0]} / {reference}")
    for key in rows[names[0]]:
        ratio = rows[names[0]][key] / rows[reference][key] if rows[reference][key] else float("nan")
        print(key.ljust(width) + "".join(str(rows[n][key]).rjust(22) for n in names) + f"   {ratio:.2f}x")
    for name, run in runs.items():
        print(f"{name} settings: {run['settings']}")
    if options.json:
        options.json.write_text(
            json.dumps(
                {
                    "device": device,
                    "ceiling_flops": ceiling,
                    "model": options.model,
                    "steps": options.steps,
                    "rows": rows,
                    "settings": {n: r["settings"] for n, r in runs.items()},
                    "step_s": {n: r["step_s"] for n, r in runs.items()},
                },
                indent=2,
            )
        )


def report(runs: dict, ceiling: float, dtype: torch.dtype) -> None:
    """Print the run just finished at once (a long benchmark cut short still leaves its figures)."""
    name, run = list(runs.items())[-1]
    print(
        f"[done] {name}: {json.dumps(figures(run, ceiling, dtype))} step_s={[round(t, 4) for t in run['step_s']]}",
        flush=True,
    )


def figures(run: dict, ceiling: float, dtype: torch.dtype) -> dict:
    """One column of the table: steady step time (median after the warm-up steps), throughput, FLOP/s, loss."""
    steady = sorted(run["step_s"][WARMUP_STEPS:] or run["step_s"])
    step_s = steady[len(steady) // 2]
    tokens = sum(run["tokens"][WARMUP_STEPS:]) / max(1, len(run["tokens"][WARMUP_STEPS:]))
    computed = sum(run["computed_tokens"][WARMUP_STEPS:]) / max(1, len(run["computed_tokens"][WARMUP_STEPS:]))
    achieved = run["flops_step"] / step_s
    return {
        "seconds per step": round(step_s, 4),
        "warm-up seconds (first steps)": round(sum(run["step_s"][:WARMUP_STEPS]), 2),
        "examples per second": round(BATCH / step_s, 1),
        "tokens per second (non-padding)": round(tokens / step_s, 1),
        "tokens computed per step": round(computed, 1),
        "GFLOP per step (counted)": round(run["flops_step"] / 1e9, 1),
        "achieved TFLOP/s": round(achieved / 1e12, 3),
        f"share of {str(dtype).split('.')[-1]} matmul ceiling": round(achieved / ceiling, 4),
        "validation loss after": round(run["val_loss"], 4),
        "peak memory MB": run["peak_mb"],
    }


if __name__ == "__main__":
    main()
