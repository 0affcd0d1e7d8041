"""The training recipe: every setting that decides the trained weights, checked, with each method's defaults, and
read from 03_train_qlora's parameters (by the notebook and by `tunebook train` alike)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from tunebook.core.runfolder import Step
from tunebook.core.settings import StepSettings, setting
from tunebook.errors import TunebookError
from tunebook.modeling.quantization import QUANTIZATIONS

METHODS = ("lora", "full")  # a LoRA adapter on a (possibly quantized) base, or every weight trained (small models)
DEFAULT_LEARNING_RATE = {"lora": 5e-4, "full": 5e-5}
ATTENTIONS = ("sdpa", "eager", "flex_attention")


@dataclass
class TrainConfig(StepSettings):
    """Everything that decides the trained weights, recorded in the manifest."""

    STEP = Step.TRAIN
    RUN_DIR_HELP = "run folder after 01_clean_the_data"

    method: str = setting(
        "lora",
        "lora (train an adapter on the base) | full (train every weight; small models, QUANTIZATION none)",
        choices=METHODS,
    )
    quantization: str = setting(
        "nf4", "how the base is held: nf4 (QLoRA) | int8 (8-bit) | none (full precision)", choices=QUANTIZATIONS
    )
    lora_r: int = setting(16, "adapter rank", above=0)
    lora_alpha: int = setting(32, "adapter scaling (alpha / r multiplies the update)", above=0)
    lora_dropout: float = setting(0.0, "dropout on the adapter input (0-1)", minimum=0, below=1)
    # a list is joined: one spelling, one resume key
    target_modules: str = setting(
        "all-linear",
        "all-linear, or comma-separated layer names such as q_proj,v_proj",
        name="LORA_TARGET_MODULES",
    )
    learning_rate: float = setting(
        0.0,
        "peak learning rate (linear warm-up, then decay); 0 means the method's default: 0.0005 LoRA, 0.00005 full",
        minimum=0,
    )
    epochs: float = setting(2.0, "passes over the training split (ignored when MAX_STEPS > 0)")
    max_steps: int = setting(-1, "stop after this many optimiser steps; -1 means use EPOCHS; workshop profile: 28")
    batch_size: int = setting(8, "examples per optimiser step", above=0)
    max_length: int = setting(
        2048,
        "longest example in tokens; the whole prompt must fit, an answer running past it is cut",
        above=0,
    )
    warmup_ratio: float = 0.1
    eval_steps: int = setting(
        0,
        "steps between validation passes and checkpoints; 0 means four per epoch; workshop profile: 28",
        minimum=0,
    )
    early_stopping_patience: int = setting(
        2, "validation passes without improvement before training stops; 0 never stops early", minimum=0
    )
    general_mix: float = setting(
        0.5,
        "general requests answered by the base model, mixed in as a share of the training examples; "
        "0 trains on the job alone; workshop profile: 0.1",
        minimum=0,
    )
    seed: int = setting(0, "seed for adapter initialisation and data order")
    # sdpa takes a packed row's structure as a dense mask; flex_attention (GPU only) as a block-sparse one. On an
    # H100, flex_attention was not faster for the 135M model (docs/guide/training.md, "On a GPU"), so sdpa stays the
    # default.
    attention: str = setting(
        "sdpa",
        "sdpa | eager | flex_attention (GPU only: the packed batch as a block-sparse mask)",
        choices=ATTENTIONS,
    )
    # Compile each decoder layer once (one graph serves them all), fusing the thousands of small kernels a step
    # launches. On an H100 it saved 0.07 s per step (135M) after 77 s of compiling (docs/guide/training.md, "On a
    # GPU"): it pays off only after about a thousand steps, so it is off unless asked for.
    compile: bool = setting(
        False, "compile each decoder layer once: faster steps on a GPU after a minute of compiling"
    )

    def __post_init__(self) -> None:
        if (
            self.quantization == "full"
        ):  # the spelling before METHOD existed: configs, manifests and registries hold it
            self.method, self.quantization = "full", "none"
        names = self.target_modules.split(",") if isinstance(self.target_modules, str) else self.target_modules
        self.target_modules = ",".join(name.strip() for name in names if name.strip())
        super().__post_init__()

    def check(self) -> None:
        """Raise a clear error for settings that cannot train together or on this machine."""
        if self.full and self.quantization != "none":
            raise TunebookError(
                f"METHOD='full' trains every weight, which a {self.quantization} base cannot hold; set QUANTIZATION='none'."
            )
        if self.max_steps <= 0 and self.epochs <= 0:
            raise TunebookError("set EPOCHS > 0 or MAX_STEPS > 0.")
        # deferred: the recipe is read to list and check parameters, which needs no torch
        import torch

        if self.attention == "flex_attention" and not torch.cuda.is_available():
            raise TunebookError(
                "ATTENTION='flex_attention' needs a GPU (PyTorch has no FlexAttention backward on a CPU); use 'sdpa'."
            )

    @property
    def full(self) -> bool:
        """Whether every weight is trained (no adapter)."""
        return self.method == "full"

    @property
    def effective_learning_rate(self) -> float:
        """The learning rate used: the configured one, or the method's default."""
        return self.learning_rate or DEFAULT_LEARNING_RATE["full" if self.full else "lora"]


@dataclass
class TrainSettings(TrainConfig):
    """03_train_qlora's parameters: the recipe, and what the step does around it (base model, resume, comparison)."""

    base_model: str = setting("bundled", "bundled | a local model folder | a hub id")
    resume: bool = setting(True, "continue an interrupted run from its last checkpoint in this run folder")
    compare_methods: str = setting(
        "nf4,int8,none,full",
        'methods to measure briefly on this job before training; empty skips it; workshop profile: ""',
    )
    compare_steps: int = setting(
        4, "optimiser steps per method in that comparison (the first is warm-up, not timed)", above=0
    )
    compare_val_examples: int = setting(
        32, "validation examples scored before and after each compared method", above=0
    )

    def config(self) -> TrainConfig:
        """The recipe alone, as the manifest records it."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})

    @property
    def compared(self) -> list[str]:
        """The methods COMPARE_METHODS names, in order (none when it is empty)."""
        return [m.strip() for m in self.compare_methods.split(",") if m.strip()]
