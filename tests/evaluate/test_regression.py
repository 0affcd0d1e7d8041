"""The general-behaviour regression probe on the tiny model."""

import math

import pytest
import torch
from conftest import fast

from tunebook.errors import TunebookError
from tunebook.evaluate import general_probe as regression
from tunebook.train import step as train


@pytest.fixture()
def lora_model(tiny_model):
    return train.prepare_model(tiny_model, fast())


def test_probe_set_has_texts_and_instructions():
    items = regression.load_probe()
    kinds = {item["kind"] for item in items}
    assert kinds == {"text", "instruction"} and len(items) >= 16


def test_an_untrained_adapter_changes_nothing(lora_model, tokenizer):
    result = regression.regression_probe(lora_model, tokenizer)
    assert set(result.base) == {"text_loss", "instruction_loss"} and all(
        math.isfinite(v) for v in result.base.values()
    )
    assert all(abs(v) < 1e-5 for v in result.change.values()) and not result.regressed


@pytest.mark.filterwarnings(
    "ignore:Model has `tie_word_embeddings=True`"
)  # the adapter on the tied output layer is the point
def test_a_damaging_adapter_is_flagged(tiny_model, tokenizer):
    # The tiny random model's output layer is near-uniform whatever its inner layers do, so the damage goes where it
    # shows: a random adapter on the output projection.
    model = train.prepare_model(tiny_model, fast(target_modules="q_proj,lm_head"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name and "lm_head" in name:
                parameter.normal_(0, 0.1)
    result = regression.regression_probe(model, tokenizer, max_increase=0.25)
    assert result.regressed and "general behaviour regressed" in result.warning
    assert max(result.change.values()) > 0.25 and result.change[result.worst] == max(result.change.values())


def test_a_full_fine_tune_needs_the_base_passed(tiny_model, tokenizer):
    full = train.prepare_model(tiny_model, fast(method="full", quantization="none"))
    with pytest.raises(TunebookError, match="pass the base model"):
        regression.regression_probe(full, tokenizer)
    base = train.prepare_model(tiny_model, fast(method="full", quantization="none"))
    assert not regression.regression_probe(full, tokenizer, base=base).regressed
