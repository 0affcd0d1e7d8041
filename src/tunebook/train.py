"""Training an adapter (QLoRA by default) on top of transformers' Trainer and peft."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
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
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from tunebook.callbacks import LiveLossCurve
from tunebook.errors import TunebookError
from tunebook.job import JobCard, card_hash
from tunebook.lineage import MANIFEST, RUN_STATE, environment
from tunebook.models import (
    QUANTIZATIONS,
    linear_module_names,
    load_model,
    load_tokenizer,
    lora_config,
    model_identity,
)
from tunebook.packing import PACKING_ATTENTION, CompletionCollator, completion_loss
from tunebook.prompts import IGNORE_INDEX, encode_parts, end_of_turn_id, features_from

DEFAULT_LEARNING_RATE = {"lora": 5e-4, "full": 5e-5}
ATTENTIONS = ("sdpa", "eager", "flex_attention")


@dataclass
class TrainConfig:
    """Everything that decides the trained weights, recorded in the manifest."""

    quantization: str = "nf4"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str = (
        "all-linear"  # or comma-separated layer names; a list is joined (one spelling, one resume key)
    )
    learning_rate: float = 0.0  # 0: the method's default (DEFAULT_LEARNING_RATE)
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 8
    max_length: int = 2048
    warmup_ratio: float = 0.1
    eval_steps: int = 0  # 0: four validation passes per epoch
    early_stopping_patience: int = 2  # validation passes without improvement before stopping; 0: never stop early
    general_mix: float = 0.5  # general requests answered by the base model, as a share of the training examples
    seed: int = 0
    # sdpa takes a packed row's structure as a dense mask; flex_attention (GPU only) as a block-sparse one. On an
    # H100, flex_attention was not faster for the 135M model (README, "On a GPU"), so sdpa stays the default.
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        names = self.target_modules.split(",") if isinstance(self.target_modules, str) else self.target_modules
        self.target_modules = ",".join(name.strip() for name in names if name.strip())

    def check(self) -> None:
        """Raise a clear error for any out-of-range setting."""
        if self.quantization not in QUANTIZATIONS:
            raise TunebookError(f"QUANTIZATION must be one of {', '.join(QUANTIZATIONS)}, got '{self.quantization}'.")
        for name in ("lora_r", "lora_alpha", "batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise TunebookError(f"{name.upper()} must be positive, got {getattr(self, name)}.")
        if self.learning_rate < 0:
            raise TunebookError(
                f"LEARNING_RATE must be positive (or 0 for the method's default), got {self.learning_rate}."
            )
        if self.max_steps <= 0 and self.epochs <= 0:
            raise TunebookError("set EPOCHS > 0 or MAX_STEPS > 0.")
        if not 0 <= self.lora_dropout < 1:
            raise TunebookError(f"LORA_DROPOUT must be in [0, 1), got {self.lora_dropout}.")
        if self.general_mix < 0:
            raise TunebookError(
                f"GENERAL_MIX must be 0 or more (a share of the training examples), got {self.general_mix}."
            )
        if self.early_stopping_patience < 0 or self.eval_steps < 0:
            raise TunebookError("EARLY_STOPPING_PATIENCE and EVAL_STEPS must be 0 or more.")
        if self.attention not in ATTENTIONS:
            raise TunebookError(f"ATTENTION must be one of {', '.join(ATTENTIONS)}, got '{self.attention}'.")
        if self.attention == "flex_attention" and not torch.cuda.is_available():
            raise TunebookError(
                "ATTENTION='flex_attention' needs a GPU (PyTorch has no FlexAttention backward on a CPU); use 'sdpa'."
            )

    @property
    def full(self) -> bool:
        """Whether every weight is trained (no adapter)."""
        return self.quantization == "full"

    @property
    def effective_learning_rate(self) -> float:
        """The learning rate used: the configured one, or the method's default."""
        return self.learning_rate or DEFAULT_LEARNING_RATE["full" if self.full else "lora"]


@dataclass
class TrainResult:
    """What training produced and how it went."""

    adapter_dir: Path
    log_history: list[dict]
    val_loss_before: float
    val_loss_after: float
    manifest: dict = field(default_factory=dict)


def build_features(
    tokenizer: PreTrainedTokenizerBase, card: JobCard, frame: pd.DataFrame, max_length: int, split: str
) -> list[dict]:
    """Tokenized training features for every row of a split; every example must keep at least one supervised token."""
    features, too_long = [], []
    for row in frame.itertuples():
        prompt, answer = encode_parts(tokenizer, card, row.text, row.target)
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


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches whose order depends only on the seed and the epoch.

    transformers' own sampler draws from the global RNG at the start of each epoch, so a run resumed from a
    checkpoint inside an epoch sees a different order than the uninterrupted run did.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int, groups: list[int] | None = None):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0
        self.groups = groups if groups is not None else [0] * len(lengths)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if len(set(self.groups)) == 1:
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
        # Several groups (job examples, general replay examples): each batch holds one group, so it shares one prompt
        # prefix and stays packed; batches of all groups are shuffled together, the incomplete ones go last.
        full, partial = [], []
        for group in sorted(set(self.groups)):
            members = [i for i, g in enumerate(self.groups) if g == group]
            order = get_length_grouped_indices(
                [self.lengths[i] for i in members], self.batch_size, generator=generator
            )
            chunks = [
                [members[j] for j in order[k : k + self.batch_size]] for k in range(0, len(order), self.batch_size)
            ]
            full += [c for c in chunks if len(c) == self.batch_size]
            partial += [c for c in chunks if len(c) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter([i for chunk in shuffled + partial for i in chunk])


class CompletionOnlyTrainer(Trainer):
    """Trainer whose loss covers only the answer tokens (see ``completion_loss``)."""

    loss_is_scaled_for_ga = False

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthGroupedSampler(
            batch, [len(f["input_ids"]) for f in dataset], seed, [f.get("group", 0) for f in dataset]
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean cross-entropy over supervised tokens, with the batch's shared prefix computed once."""
        if self.accelerator.num_processes > 1:
            # Under accelerate launch / torchrun the forward must go through the DistributedDataParallel wrapper so
            # gradients are synchronised: the model's own loss (same definition, without the single-process shortcuts).
            loss = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"]
            ).loss
        else:
            loss = completion_loss(model, inputs)
        return (loss, {"loss": loss}) if return_outputs else loss


def prepare_model(base_model: str, config: TrainConfig) -> PreTrainedModel:
    """The base model with a fresh LoRA adapter on it (or, for full fine-tuning, the base model itself), with the
    attention implementation ``config`` asks for."""
    model = load_model(base_model, config.quantization)
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
    return model


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return (
        isinstance(error, (torch.OutOfMemoryError, MemoryError))
        or "out of memory" in text
        or "can't allocate memory" in text
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
) -> TrainResult:
    """Train an adapter (or the full model) on the train split, keep the checkpoint with the best validation loss,
    and save it with its manifest in ``out_dir``.

    Checkpoints go to ``out_dir/checkpoints`` at every validation pass; an interrupted run with the same inputs resumes
    from the last one and ends with the same weights as an uninterrupted run.
    """
    config.check()
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST).exists():
        raise TunebookError(f"{out_dir} already holds a trained model; it is never overwritten. Use a new run folder.")
    tokenizer = load_tokenizer(base_model)
    train_features = build_features(tokenizer, card, splits["train"], config.max_length, "train")
    val_features = build_features(tokenizer, card, splits["val"], config.max_length, "val")
    if not train_features or not val_features:
        raise TunebookError(
            "training needs examples in both the train and the val split; rerun 01_clean_the_data with more data."
        )
    job_examples = len(train_features)
    if config.general_mix > 0:
        from tunebook import replay

        answers = replay.base_answers(base_model, replay.load_requests())
        train_features += replay.replay_features(
            tokenizer, answers, round(config.general_mix * job_examples), config.max_length
        )
    checkpoints = out_dir / "checkpoints"
    key = _run_key(card, base_model, config, dataset_hash)
    state = _resume_state(checkpoints, key, resume)
    model = prepare_model(base_model, config)
    steps_per_epoch = max(1, -(-len(train_features) // config.batch_size))
    total_steps = config.max_steps if config.max_steps > 0 else max(1, round(steps_per_epoch * config.epochs))
    eval_steps = config.eval_steps or max(1, min(steps_per_epoch, total_steps) // 4)
    on_gpu = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
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
    extra = [EarlyStoppingCallback(config.early_stopping_patience)] if config.early_stopping_patience > 0 else []
    trainer = CompletionOnlyTrainer(
        model=model,
        args=args,
        train_dataset=train_features,
        eval_dataset=val_features,
        data_collator=CompletionCollator(
            tokenizer.pad_token_id,
            share_prefix=args.world_size == 1 and model.config._attn_implementation in PACKING_ATTENTION,
        ),
        callbacks=[*extra, *callbacks],
    )
    main_process = trainer.is_world_process_zero()
    try:
        if state is None:
            val_before = trainer.evaluate()["eval_loss"]
            if main_process:
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
        val_after = trainer.evaluate()["eval_loss"]
    except Exception as error:  # noqa: BLE001 - only out-of-memory is translated, everything else is re-raised
        if not _is_out_of_memory(error):
            raise
        raise TunebookError(
            f"out of memory while training with BATCH_SIZE={config.batch_size} and MAX_LENGTH={config.max_length} "
            f"(longest training example: {max(len(f['input_ids']) for f in train_features)} tokens). Set BATCH_SIZE to "
            f"{max(1, config.batch_size // 2)}, lower MAX_LENGTH, or use QUANTIZATION='nf4'; checkpoints saved so far "
            f"are in {checkpoints} and a rerun with the same settings resumes from them."
        ) from error
    history = [{"step": 0, "eval_loss": val_before}, *trainer.state.log_history]
    manifest = {
        "job": card.name,
        "job_card_sha256": key["job_card_sha256"],
        "task_kind": card.task_kind,
        "choices": card.choices,
        "dataset_hash": dataset_hash,
        "base_model": key["base_model"],
        "method": "full fine-tuning" if config.full else f"LoRA on a {config.quantization} base",
        "config": {**asdict(config), "learning_rate_used": config.effective_learning_rate},
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_examples": job_examples,
        "general_examples": len(train_features) - job_examples,
        "val_examples": len(val_features),
        "answers_cut": supervision_summary(tokenizer, train_features[:job_examples])["answers_cut"],
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "best_step": trainer.state.best_global_step,
        "steps": trainer.state.global_step,
        "planned_steps": total_steps,
        "stopped_early": trainer.state.global_step < total_steps,
        "resumed_from": Path(state["checkpoint"]).name if state else None,
        "seed": config.seed,
        "wall_time_s": round(wall, 2),
        "attention": config.attention,
        **environment(args.world_size),
    }
    trainer.accelerator.wait_for_everyone()
    if main_process:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(out_dir), safe_serialization=True)
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if not keep_checkpoints:
            shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainResult(out_dir, history, val_before, val_after, manifest)


def recorded_results(result: TrainResult) -> dict:
    """The figures 03_train_qlora (or ``tunebook train``) records in results/03_train_qlora.json."""
    keys = (
        "best_step",
        "steps",
        "stopped_early",
        "wall_time_s",
        "peak_memory_mb",
        "dataset_hash",
        "processes",
        "trainable_parameters",
    )
    return {
        "val_loss_before": result.val_loss_before,
        "val_loss_after": result.val_loss_after,
        "quantization": result.manifest["config"]["quantization"],
        **{k: result.manifest[k] for k in keys},
    }


def config_from_parameters(parameters: dict) -> TrainConfig:
    """A TrainConfig from 03_train_qlora's parameter names (QUANTIZATION, LORA_R, ...); other names are ignored."""
    names = {f.upper(): f for f in TrainConfig.__dataclass_fields__} | {"LORA_TARGET_MODULES": "target_modules"}
    return TrainConfig(**{names[k]: v for k, v in parameters.items() if k in names})


def train_run_folder(run_dir: str | Path, parameters: dict) -> TrainResult:
    """What 03_train_qlora does, for a script: train on a run folder written by 01_clean_the_data.

    This is the entry point for ``accelerate launch -m tunebook.cli train RUN_DIR`` (or torchrun) on several GPUs.
    """
    from tunebook.data import load_splits
    from tunebook.job import load_job_card
    from tunebook.models import resolve_base_model

    run_dir = Path(run_dir)
    version = run_dir / "data" / "dataset_version.json"
    if not version.is_file():
        raise TunebookError(
            f"{run_dir} has no data/dataset_version.json: run 00_define_the_job and 01_clean_the_data into it first."
        )
    card = load_job_card(run_dir / "job.yaml")
    splits = load_splits(run_dir / "data")
    base_model = resolve_base_model(parameters.get("BASE_MODEL", "bundled"))
    config = config_from_parameters(parameters)
    dataset_hash = json.loads(version.read_text())["hash"]
    return train_adapter(
        card, splits, base_model, config, run_dir / "adapter", dataset_hash, resume=parameters.get("RESUME", True)
    )
