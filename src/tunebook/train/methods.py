"""Measuring the ways to train (LoRA on an nf4, int8 or unquantized base, or full fine-tuning) briefly on the
user's own job before training."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from tunebook.card.schema import JobCard
from tunebook.core.runfolder import RunFolder
from tunebook.errors import TunebookError
from tunebook.train.callbacks import StepTimer
from tunebook.train.recipe import TrainConfig
from tunebook.train.step import train_adapter

# The ways compared, by the name the table gives them: LoRA on a base held each way, or every weight trained.
TRAINING_WAYS = {"nf4": ("lora", "nf4"), "int8": ("lora", "int8"), "none": ("lora", "none"), "full": ("full", "none")}


def _method_trial(card: JobCard, splits: dict[str, pd.DataFrame], base_model: str, config: TrainConfig) -> dict:
    """Train briefly with one method in this (fresh) process and report its cost and validation loss."""
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as folder:
        result = train_adapter(
            card, splits, base_model, config, RunFolder(Path(folder)).adapter_dir, "method-trial", callbacks=[timer]
        )
    manifest = result.manifest
    return {
        "method": "full" if config.full else config.quantization,
        "trainable_parameters": manifest.trainable_parameters,
        "peak_memory_mb": manifest.peak_memory_mb,
        **({"peak_gpu_memory_mb": manifest.peak_gpu_memory_mb} if manifest.peak_gpu_memory_mb is not None else {}),
        "seconds_per_step": round(timer.steady(), 2),
        "learning_rate": manifest.config["learning_rate_used"],
        "val_loss_before": round(result.val_loss_before, 4),
        "val_loss_after": round(result.val_loss_after, 4),
    }


def compare_methods(
    card: JobCard,
    splits: dict[str, pd.DataFrame],
    base_model: str,
    config: TrainConfig,
    methods: Sequence[str] = tuple(TRAINING_WAYS),
    steps: int = 4,
    val_examples: int = 32,
) -> pd.DataFrame:
    """Train each method for ``steps`` steps on this job, each in a fresh process so peak memory is its own.

    Columns: trainable parameters, peak memory, median seconds per step after the first (warm-up), learning rate,
    and validation loss before and after.
    """
    unknown = [m for m in methods if m not in TRAINING_WAYS]
    if unknown:
        raise TunebookError(f"unknown method(s) {unknown}; choose from {', '.join(TRAINING_WAYS)}.")
    short = {**splits, "val": splits["val"].head(val_examples)}
    rows = []
    for method in methods:
        trial = TrainConfig(
            **{
                **asdict(config),
                "method": TRAINING_WAYS[method][0],
                "quantization": TRAINING_WAYS[method][1],
                "max_steps": steps,
                "eval_steps": steps,
                "early_stopping_patience": 0,
                "learning_rate": config.learning_rate if (method == "full") == config.full else 0.0,
            }
        )
        # One process per method: peak memory is a per-process high-water mark.
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            rows.append(pool.submit(_method_trial, card, short, base_model, trial).result())
    return pd.DataFrame(rows).set_index("method")
