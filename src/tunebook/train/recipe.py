"""The training recipe: every setting that decides the trained weights, checked, with each method's defaults, and
read from 03_train_qlora's parameters (by the notebook and by `tunebook train` alike)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunebook.core.settings import StepSettings, settings_from
from tunebook.errors import TunebookError
from tunebook.modeling.models import QUANTIZATIONS

METHODS = ("lora", "full")  # a LoRA adapter on a (possibly quantized) base, or every weight trained (small models)
DEFAULT_LEARNING_RATE = {"lora": 5e-4, "full": 5e-5}
ATTENTIONS = ("sdpa", "eager", "flex_attention")


@dataclass
class TrainConfig(StepSettings):
    """Everything that decides the trained weights, recorded in the manifest."""

    method: str = "lora"
    quantization: str = "nf4"  # how the base is held while training: nf4 | int8 | none
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
    # Compile each decoder layer once (one graph serves them all), fusing the thousands of small kernels a step
    # launches. On an H100 it saved 0.07 s per step (135M) after 77 s of compiling (README, "On a GPU"): it pays off
    # only after about a thousand steps, so it is off unless asked for.
    compile: bool = False

    def __post_init__(self) -> None:
        if (
            self.quantization == "full"
        ):  # the spelling before METHOD existed: configs, manifests and registries hold it
            self.method, self.quantization = "full", "none"
        names = self.target_modules.split(",") if isinstance(self.target_modules, str) else self.target_modules
        self.target_modules = ",".join(name.strip() for name in names if name.strip())

    def check(self) -> None:
        """Raise a clear error for any out-of-range setting."""
        if self.method not in METHODS:
            raise TunebookError(f"METHOD must be one of {', '.join(METHODS)}, got '{self.method}'.")
        if self.quantization not in QUANTIZATIONS:
            raise TunebookError(f"QUANTIZATION must be one of {', '.join(QUANTIZATIONS)}, got '{self.quantization}'.")
        if self.full and self.quantization != "none":
            raise TunebookError(
                f"METHOD='full' trains every weight, which a {self.quantization} base cannot hold; set QUANTIZATION='none'."
            )
        self.require_positive("lora_r", "lora_alpha", "batch_size", "max_length")
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
        if not isinstance(self.compile, bool):
            raise TunebookError(f"COMPILE must be True or False, got {self.compile!r}.")
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


def config_from_parameters(parameters: dict) -> TrainConfig:
    """A TrainConfig from 03_train_qlora's parameter names (METHOD, QUANTIZATION, LORA_R, ...); other names are ignored."""
    return settings_from(TrainConfig, parameters, {"LORA_TARGET_MODULES": "target_modules"})
