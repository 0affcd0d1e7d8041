"""Training an adapter (QLoRA by default) on top of transformers' Trainer and peft."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import (
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import ProgressCallback

from tunebook.card.schema import JobCard, card_hash
from tunebook.core.artifacts import Manifest, TrainResults, write_model
from tunebook.core.lineage import environment
from tunebook.core.runfolder import CHECKPOINTS, RUN_STATE, RunFolder, manifest_path
from tunebook.errors import TunebookError
from tunebook.knowledge.context import KnowledgeIndex, load_index
from tunebook.knowledge.passages import load_knowledge
from tunebook.knowledge.render import model_inputs
from tunebook.knowledge.retrievers import BM25
from tunebook.modeling.models import (
    compile_decoder_layers,
    linear_module_names,
    load_model,
    load_tokenizer,
    lora_config,
    model_identity,
    resolve_base_model,
)
from tunebook.modeling.prompts import IGNORE_INDEX, encode_parts, end_of_turn_id, features_from
from tunebook.train import replay
from tunebook.train.callbacks import LiveLossCurve, QuietProgress
from tunebook.train.packing import (
    ACTIVATION_BUDGET_MB,
    PACKING_ATTENTION,
    CompletionCollator,
    CompletionOnlyTrainer,
    layers_to_checkpoint,
    longest_row,
    pair_cost,
    step_memory_mb,
    text_config,
)
from tunebook.train.raft import raft_frame
from tunebook.train.recipe import TrainConfig, TrainSettings


@dataclass
class TrainResult:
    """What training produced and how it went."""

    adapter_dir: Path
    log_history: list[dict]
    val_loss_before: float
    val_loss_after: float
    manifest: Manifest
    blind: TrainResult | None = None  # hybrid jobs: the document-blind adapter trained on the same examples


def build_features(
    tokenizer: PreTrainedTokenizerBase, card: JobCard, frame: pd.DataFrame, max_length: int, split: str
) -> list[dict]:
    """Tokenized training features for every row of a split; every example must keep at least one supervised token."""
    features, too_long = [], []
    for row, text in zip(frame.itertuples(), model_inputs(frame)):  # the text after its passages, where it has them
        prompt, answer = encode_parts(tokenizer, card, text, row.target)
        if len(prompt) >= max_length:
            too_long.append((row.id, len(prompt) + len(answer)))
        else:
            features.append(features_from(prompt, answer, max_length))
    if too_long:
        named = ", ".join(f"{i} ({n} tokens)" for i, n in too_long[:5]) + (
            f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        )
        raise TunebookError(
            f"{len(too_long)} example(s) of the {split} split would have no supervised token: their prompt alone is "
            f"MAX_LENGTH={max_length} tokens or more, so truncation removes the whole answer. Examples: {named}. "
            f"Raise MAX_LENGTH to at least {max(n for _, n in too_long)}, or drop them in 01_clean_the_data "
            "(the audit's prompt_cut column lists them)."
        )
    return features


def supervision_summary(tokenizer: PreTrainedTokenizerBase, features: list[dict]) -> dict:
    """How many tokens carry the loss per example, and how many answers MAX_LENGTH cut (losing the stop token)."""
    counts = [sum(label != IGNORE_INDEX for label in f["labels"]) for f in features]
    stop = end_of_turn_id(tokenizer)
    return {
        "examples": len(features),
        "supervised_tokens_min": min(counts),
        "supervised_tokens_mean": round(sum(counts) / len(counts), 1),
        "supervised_tokens_max": max(counts),
        "tokens_per_example_mean": round(sum(len(f["input_ids"]) for f in features) / len(features), 1),
        "answers_cut": sum(f["labels"][-1] != stop for f in features),
    }


def prepare_model(base_model: str, config: TrainConfig) -> PreTrainedModel:
    """The base model with a fresh LoRA adapter on it (or, for full fine-tuning, the base model itself), with the
    attention implementation ``config`` asks for."""
    model = load_model(base_model, config.quantization, float32=config.full)
    if model.config._attn_implementation != config.attention:
        model.set_attn_implementation(config.attention)
    if config.full:
        model.train()
    else:
        if config.quantization in ("nf4", "int8"):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        torch.manual_seed(config.seed)
        try:
            model = get_peft_model(
                model, lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules)
            )
        except ValueError as error:
            if "target" not in str(error).lower():
                raise
            raise TunebookError(
                f"LORA_TARGET_MODULES={config.target_modules!r} matches no layer of {Path(base_model).name}. "
                f"Its linear layers are: {', '.join(linear_module_names(model))} (or use 'all-linear')."
            ) from None
    if config.compile:
        compile_decoder_layers(model)
    return model


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return (
        isinstance(error, (torch.OutOfMemoryError, MemoryError))
        or "out of memory" in text
        or "can't allocate memory" in text
    )


def _out_of_memory(config: TrainConfig, features: list[dict], checkpoints: Path) -> TunebookError:
    """What to change when training ran out of memory, and where the checkpoints saved so far are."""
    return TunebookError(
        f"out of memory while training with BATCH_SIZE={config.batch_size} and MAX_LENGTH={config.max_length} "
        f"(longest training example: {max(len(f['input_ids']) for f in features)} tokens). Set BATCH_SIZE to "
        f"{max(1, config.batch_size // 2)}, lower MAX_LENGTH, or use METHOD='lora' with QUANTIZATION='nf4'; checkpoints saved so far "
        f"are in {checkpoints} and a rerun with the same settings resumes from them."
    )


def _free_memory_mb() -> float:
    """Memory this machine can still give the process, in MB."""
    import psutil  # deferred: only CPU training asks

    return psutil.virtual_memory().available / 2**20


def memory_plan(
    model: PreTrainedModel, collator: CompletionCollator, features: list[dict], config: TrainConfig
) -> tuple[int, float | None]:
    """Examples per forward pass and the activation budget of a step in MB (``packing.completion_loss``).

    BATCH_SIZE and no budget off a CPU. On a CPU the budget is ``packing.ACTIVATION_BUDGET_MB``, or the memory free
    if less, and the examples per pass the divisor of BATCH_SIZE whose longest row fits it (decoder layers recomputed
    as needed) in the least estimated time; the rest of each batch is accumulated, so the optimiser steps and the
    batch they average over stay the recipe's. Refuses, before the first step, a training whose longest example alone
    does not fit, naming the MAX_LENGTH that does.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or next(model.parameters()).device.type != "cpu":
        return config.batch_size, None
    free = _free_memory_mb()
    budget = min(ACTIVATION_BUDGET_MB, free)
    steps_per_epoch = max(1, -(-len(features) // config.batch_size))
    planned = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.epochs)
    epochs = min(3, -(-planned // steps_per_epoch))
    layers = text_config(model).num_hidden_layers

    def need(size: int) -> tuple[int, float, float]:
        """The longest row's tokens, its step's memory, and the batch's relative time in passes of ``size``."""
        tokens = longest_row(collator, features, config.batch_size, config.seed, epochs, micro=size)
        recomputed = layers_to_checkpoint(model, tokens, budget)
        # a recomputed layer runs its forward pass twice: about a third more of its time
        cost = config.batch_size / size * tokens * (1 + recomputed / layers / 3)
        return tokens, step_memory_mb(model, tokens, recomputed), cost

    planned_sizes = {size: need(size) for size in range(config.batch_size, 0, -1) if config.batch_size % size == 0}
    fitting = [(cost, -size) for size, (_, needed, cost) in planned_sizes.items() if needed <= budget]
    if fitting:
        return -min(fitting)[1], budget  # the quickest: one pass with a shared prefix, or shorter rows kept whole
    tokens, needed, _ = planned_sizes[1]
    if needed <= free:
        return 1, budget
    per_token = step_memory_mb(model, 1, layers_to_checkpoint(model, 10**9, budget))
    raise TunebookError(
        f"not enough memory to train with MAX_LENGTH={config.max_length}: the longest example alone is a row of "
        f"{tokens} tokens, and a training step on it needs about {needed:,.0f} MB beyond the loaded model, while this "
        f"machine has {free:,.0f} MB free. Set MAX_LENGTH={int(free / per_token)} (or, for a job with documents, lower "
        "knowledge.k or knowledge.passage_words in the job card), or free memory (other notebooks, processes) and "
        "rerun."
    )


def _run_key(card: JobCard, base_model: str, config: TrainConfig, dataset_hash: str) -> dict:
    return {
        "job_card_sha256": card_hash(card),
        "base_model": model_identity(base_model),
        "dataset_hash": dataset_hash,
        "config": asdict(config),
    }


def _resume_state(checkpoints: Path, key: dict, resume: bool) -> dict | None:
    """The saved state of an interrupted run with the same inputs, or None for a fresh start."""
    saved = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not saved:
        return None
    if not resume:
        raise TunebookError(
            f"{checkpoints} holds checkpoints of an interrupted run: set RESUME=True to continue it, or use a new run folder."
        )
    state = json.loads((checkpoints / RUN_STATE).read_text()) if (checkpoints / RUN_STATE).is_file() else {}
    differ = [name for name in key if state.get("key", {}).get(name) != key[name]]
    if differ:
        detail = differ
        if "config" in differ and "config" in state.get("key", {}):
            detail = [
                f"config.{k}" for k in key["config"] if state["key"]["config"].get(k) != key["config"][k]
            ] or differ
        raise TunebookError(
            f"the checkpoints in {checkpoints} come from a run with different inputs ({', '.join(detail)}), so resuming "
            "would mix two runs. Use a new run folder, or restore the settings of the interrupted run."
        )
    return {**state, "checkpoint": str(saved[-1])}


def _features(
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    splits: dict[str, pd.DataFrame],
    base_model: str,
    config: TrainConfig,
) -> tuple[list[dict], list[dict], int]:
    """Training features (the job's, then general replay mixed in), validation features, and how many are the job's."""
    train_features = build_features(tokenizer, card, splits["train"], config.max_length, "train")
    val_features = build_features(tokenizer, card, splits["val"], config.max_length, "val")
    if not train_features or not val_features:
        raise TunebookError(
            "training needs examples in both the train and the val split; rerun 01_clean_the_data with more data."
        )
    job_examples = len(train_features)
    if config.general_mix > 0:
        answers = replay.base_answers(base_model, replay.load_requests())
        train_features += replay.replay_features(
            tokenizer, answers, round(config.general_mix * job_examples), config.max_length
        )
    return train_features, val_features, job_examples


def _training_arguments(
    config: TrainConfig, checkpoints: Path, examples: int, micro: int | None = None
) -> tuple[TrainingArguments, int]:
    """transformers' arguments for this recipe (validation and a checkpoint every ``eval_steps``; best kept; ``micro``
    examples per forward pass, the batch's rest accumulated), and the planned number of optimiser steps."""
    micro = micro or config.batch_size
    steps_per_epoch = max(1, -(-examples // config.batch_size))
    total_steps = config.max_steps if config.max_steps > 0 else max(1, round(steps_per_epoch * config.epochs))
    # EVAL_STEPS past the last step would leave no validation pass and no checkpoint to keep: validate at the end
    eval_steps = (
        min(config.eval_steps, total_steps) if config.eval_steps else max(1, min(steps_per_epoch, total_steps) // 4)
    )
    on_gpu = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=config.batch_size // micro,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.effective_learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=int(config.warmup_ratio * total_steps),
        lr_scheduler_type="linear",
        logging_steps=max(1, min(eval_steps, steps_per_epoch // 10)),
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        prediction_loss_only=True,
        remove_unused_columns=False,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    return args, total_steps


def _fit(
    trainer: Trainer, state: dict | None, key: dict, checkpoints: Path, callbacks: list[TrainerCallback]
) -> tuple[float, float, float]:
    """Validation loss before (measured once, kept across a resume), training, and validation loss after; with the
    training wall time in seconds."""
    if state is None:
        val_before = trainer.evaluate()["eval_loss"]
        if trainer.is_world_process_zero():
            checkpoints.mkdir(parents=True, exist_ok=True)
            (checkpoints / RUN_STATE).write_text(json.dumps({"key": key, "val_loss_before": val_before}, indent=2))
    else:
        val_before = state["val_loss_before"]
    for callback in callbacks:
        if isinstance(callback, LiveLossCurve):
            callback.before = val_before
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=state["checkpoint"] if state else None)
    wall = time.perf_counter() - started
    return val_before, trainer.evaluate()["eval_loss"], wall


def _manifest(
    card: JobCard,
    config: TrainConfig,
    key: dict,
    trainer: Trainer,
    counts: dict,
    state: dict | None,
    planned_steps: int,
    measured: tuple[float, float, float],
) -> Manifest:
    """The adapter's manifest: job, data, base model, recipe, counts, losses, steps, time and environment."""
    val_before, val_after, wall = measured
    return Manifest(
        job=card.name,
        job_card_sha256=key["job_card_sha256"],
        task_kind=card.task_kind,
        choices=card.choices,
        dataset_hash=key["dataset_hash"],
        base_model=key["base_model"],
        method="full fine-tuning" if config.full else f"LoRA on a {config.quantization} base",
        config={**asdict(config), "learning_rate_used": config.effective_learning_rate},
        **counts,
        val_loss_before=val_before,
        val_loss_after=val_after,
        best_step=trainer.state.best_global_step,
        steps=trainer.state.global_step,
        planned_steps=planned_steps,
        stopped_early=trainer.state.global_step < planned_steps,
        resumed_from=Path(state["checkpoint"]).name if state else None,
        seed=config.seed,
        wall_time_s=round(wall, 2),
        attention=config.attention,
        **environment(trainer.args.world_size),
    )


def train_adapter(
    card: JobCard,
    splits: dict[str, pd.DataFrame],
    base_model: str,
    config: TrainConfig,
    out_dir: str | Path,
    dataset_hash: str,
    resume: bool = True,
    callbacks: list[TrainerCallback] = (),
    keep_checkpoints: bool = False,
    knowledge_version: str | None = None,
) -> TrainResult:
    """Train an adapter (or the full model) on the train split, keep the checkpoint with the best validation loss,
    and save it with its manifest in ``out_dir``.

    Checkpoints go to ``out_dir/checkpoints`` at every validation pass; an interrupted run with the same inputs resumes
    from the last one and ends with the same weights as an uninterrupted run.
    """
    config.check()
    out_dir = Path(out_dir)
    if manifest_path(out_dir).exists():
        raise TunebookError(f"{out_dir} already holds a trained model; it is never overwritten. Use a new run folder.")
    tokenizer = load_tokenizer(base_model)
    train_features, val_features, job_examples = _features(tokenizer, card, splits, base_model, config)
    checkpoints = out_dir / CHECKPOINTS
    key = _run_key(card, base_model, config, dataset_hash)
    state = _resume_state(checkpoints, key, resume)
    model = prepare_model(base_model, config)
    collator = CompletionCollator(
        tokenizer.pad_token_id,
        share_prefix=int(os.environ.get("WORLD_SIZE", "1")) == 1
        and model.config._attn_implementation in PACKING_ATTENTION,
        pair_cost=pair_cost(model),
    )
    micro, budget = memory_plan(model, collator, train_features, config)
    args, total_steps = _training_arguments(config, checkpoints, len(train_features), micro)
    extra = [EarlyStoppingCallback(config.early_stopping_patience)] if config.early_stopping_patience > 0 else []
    trainer = CompletionOnlyTrainer(
        model=model,
        args=args,
        train_dataset=train_features,
        eval_dataset=val_features,
        data_collator=collator,
        callbacks=[*extra, *callbacks],
    )
    trainer.activation_budget_mb = budget
    if trainer.pop_callback(ProgressCallback) is not None:  # a terminal's; in a notebook the Trainer shows a table
        trainer.add_callback(QuietProgress)
    try:
        val_before, val_after, wall = _fit(trainer, state, key, checkpoints, callbacks)
    except Exception as error:  # noqa: BLE001 - only out-of-memory is translated, everything else is re-raised
        if not _is_out_of_memory(error):
            raise
        raise _out_of_memory(config, train_features, checkpoints) from error
    history = [{"step": 0, "eval_loss": val_before}, *trainer.state.log_history]
    counts = {
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_examples": job_examples,
        "general_examples": len(train_features) - job_examples,
        "knowledge_version": knowledge_version,
        "val_examples": len(val_features),
        "answers_cut": supervision_summary(tokenizer, train_features[:job_examples])["answers_cut"],
    }
    manifest = _manifest(card, config, key, trainer, counts, state, total_steps, (val_before, val_after, wall))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(out_dir), safe_serialization=True)
        write_model(manifest_path(out_dir), manifest)
        if not keep_checkpoints:
            shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainResult(out_dir, history, val_before, val_after, manifest)


def recorded_results(result: TrainResult) -> TrainResults:
    """The figures 03_train_qlora (or ``tunebook train``) records as its step results."""
    m = result.manifest
    return TrainResults(
        val_loss_before=result.val_loss_before,
        val_loss_after=result.val_loss_after,
        quantization=m.quantization,
        method=m.config["method"],
        best_step=m.best_step,
        steps=m.steps,
        stopped_early=m.stopped_early,
        wall_time_s=m.wall_time_s,
        peak_memory_mb=m.peak_memory_mb,
        dataset_hash=m.dataset_hash,
        processes=m.processes,
        trainable_parameters=m.trainable_parameters,
    )


def train_run_folder(run_dir: str | Path, parameters: dict, callbacks: list[TrainerCallback] = ()) -> TrainResult:
    """Step 03 on a run folder written by 01_clean_the_data, from 03's parameters (QUANTIZATION, LORA_R, ...): what
    ``tunebook train`` runs (also under ``accelerate launch -m tunebook.cli train RUN_DIR`` or torchrun)."""
    return train_run(RunFolder(Path(run_dir)), TrainSettings.from_parameters(parameters), callbacks)


def train_run(run: RunFolder, settings: TrainSettings, callbacks: list[TrainerCallback] = ()) -> TrainResult:
    """Step 03 on a run folder written by 01_clean_the_data: the notebook and ``tunebook train`` both end here, so
    the two ways of training read the same settings the same way."""
    if not run.dataset_version.is_file():
        raise TunebookError(
            f"{run.root} has no {run.relative(run.dataset_version)}: run 00_define_the_job and 01_clean_the_data into it first."
        )
    card = run.read_job_card()
    splits = run.read_splits()
    base_model, config, resume = resolve_base_model(settings.base_model), settings.config(), settings.resume
    dataset_hash = run.read_dataset_version().hash

    def fit(parts: dict[str, pd.DataFrame], out_dir: Path, **extra) -> TrainResult:
        return train_adapter(card, parts, base_model, config, out_dir, dataset_hash, resume=resume, **extra)

    if card.knowledge is None:
        return fit(splits, run.adapter_dir, callbacks=callbacks)
    # the hybrid stack: the adapter trained with passages in its prompts; the document-blind one, on the same
    # examples, is what 04 compares it with
    index = training_index(run, card)
    blind = fit(splits, run.blind_adapter_dir)
    with_passages = {
        "train": raft_frame(card, splits["train"], index, seed=config.seed),
        "val": index.attach(splits["val"]),
    }
    hybrid = fit(
        {**splits, **with_passages}, run.adapter_dir, callbacks=callbacks, knowledge_version=index.knowledge.version
    )
    return replace(hybrid, blind=blind)


def training_index(run: RunFolder, card: JobCard) -> KnowledgeIndex:
    """The retrieval index hybrid training quotes from: the one 02 chose on validation, else BM25 over 01's passages."""
    if run.knowledge_index.is_dir():
        return load_index(run.knowledge_index)
    knowledge = load_knowledge(run.knowledge_dir)
    return KnowledgeIndex(knowledge, BM25().fit(knowledge.passages), card.knowledge.k)
