"""How a base model's weights are held in memory: the names every step and the training recipe accept."""

QUANTIZATIONS = ("nf4", "int8", "none")  # 4-bit NormalFloat (QLoRA), 8-bit, full precision
