"""QLoRA training on top of transformers' Trainer and peft."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase, Trainer, TrainingArguments

from tunebook.errors import TunebookError
from tunebook.job import JobCard, card_hash
from tunebook.models import QUANTIZATIONS, load_model, load_tokenizer, lora_config, model_identity
from tunebook.prompts import IGNORE_INDEX, encode_example

MANIFEST = "tunebook_manifest.json"


@dataclass
class TrainConfig:
    """Everything that decides the adapter, recorded in its manifest."""

    quantization: str = "nf4"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = 1e-3
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    max_length: int = 512
    warmup_ratio: float = 0.1
    eval_steps: int = 0
    seed: int = 0

    def check(self) -> None:
        """Raise a clear error for any out-of-range setting."""
        if self.quantization not in QUANTIZATIONS:
            raise TunebookError(f"QUANTIZATION must be one of {', '.join(QUANTIZATIONS)}, got '{self.quantization}'.")
        for name in ("lora_r", "lora_alpha", "batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise TunebookError(f"{name.upper()} must be positive, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise TunebookError(f"LEARNING_RATE must be positive, got {self.learning_rate}.")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise TunebookError("set EPOCHS > 0 or MAX_STEPS > 0.")


@dataclass
class TrainResult:
    """What training produced and how it went."""

    adapter_dir: Path
    log_history: list[dict]
    val_loss_before: float
    val_loss_after: float
    manifest: dict = field(default_factory=dict)


def build_features(tokenizer: PreTrainedTokenizerBase, card: JobCard, frame: pd.DataFrame, max_length: int, split: str) -> list[dict]:
    """Tokenized training features for every row of a split."""
    return [
        encode_example(tokenizer, card, row.text, row.target, max_length, where=f"{split} split, id {row.id}")
        for row in frame.itertuples()
    ]


class CompletionOnlyTrainer(Trainer):
    """Trainer whose loss covers only the answer tokens, projecting to the vocabulary only there."""

    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean cross-entropy over supervised tokens; the LM head runs on those positions only."""
        labels = inputs["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
        loss = F.cross_entropy(logits, labels[keep])
        return (loss, {"logits": logits}) if return_outputs else loss


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    names = ("tunebook", "torch", "transformers", "peft", "bitsandbytes", "accelerate")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def train_adapter(
    card: JobCard,
    splits: dict[str, pd.DataFrame],
    base_model: str,
    config: TrainConfig,
    out_dir: str | Path,
    dataset_hash: str,
) -> TrainResult:
    """Train a LoRA adapter (on a 4-bit base for QLoRA) and save it with its manifest in ``out_dir``."""
    config.check()
    out_dir = Path(out_dir)
    if (out_dir / "adapter_config.json").exists():
        raise TunebookError(f"{out_dir} already holds an adapter; adapters are never overwritten. Use a new run folder.")
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(base_model)
    train_features = build_features(tokenizer, card, splits["train"], config.max_length, "train")
    val_features = build_features(tokenizer, card, splits["val"], config.max_length, "val")
    model = load_model(base_model, config.quantization)
    if config.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules))
    steps_per_epoch = max(1, -(-len(train_features) // config.batch_size))
    total_steps = config.max_steps if config.max_steps > 0 else max(1, round(steps_per_epoch * config.epochs))
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=int(config.warmup_ratio * total_steps),
        lr_scheduler_type="linear",
        logging_steps=max(1, steps_per_epoch // 10),
        eval_strategy="steps",
        eval_steps=config.eval_steps or max(1, total_steps // 4),
        save_strategy="no",
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=model.dtype == torch.bfloat16 if hasattr(model, "dtype") else False,
        dataloader_num_workers=0,
    )
    trainer = CompletionOnlyTrainer(
        model=model,
        args=args,
        train_dataset=train_features,
        eval_dataset=val_features,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True),
    )
    val_before = trainer.evaluate()["eval_loss"]
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    val_after = trainer.evaluate()["eval_loss"]
    model.save_pretrained(str(out_dir), safe_serialization=True)
    manifest = {
        "job": card.name,
        "job_card_sha256": card_hash(card),
        "task_kind": card.task_kind,
        "choices": card.choices,
        "dataset_hash": dataset_hash,
        "base_model": model_identity(base_model),
        "config": asdict(config),
        "train_examples": len(train_features),
        "val_examples": len(val_features),
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "wall_time_s": round(wall, 2),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "argv": sys.argv[:1],
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    # train() starts a fresh log, so the untrained adapter's validation loss is put back in front of it.
    history = [{"step": 0, "eval_loss": val_before}, *trainer.state.log_history]
    return TrainResult(out_dir, history, val_before, val_after, manifest)


def read_manifest(adapter_dir: str | Path) -> dict:
    """The manifest saved next to an adapter."""
    path = Path(adapter_dir) / MANIFEST
    if not path.is_file():
        raise TunebookError(f"{path} is missing: this adapter was not trained by tunebook's 03_train_qlora.")
    return json.loads(path.read_text())
