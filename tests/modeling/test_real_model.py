"""Slow checks on the real bundled model (run with `make test-slow`)."""

import pytest
import torch
from conftest import EXAMPLE

from tunebook.card import schema as job
from tunebook.data import examples as data
from tunebook.modeling import decoding, models, predict, prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundled():
    return models.resolve_base_model("bundled")


def test_bundled_model_converts_once_and_keeps_its_identity(bundled):
    assert models.resolve_base_model("bundled") == bundled
    identity = models.model_identity(bundled)
    assert identity["name"] == models.BUNDLED_NAME and len(identity["sha256"]) == 64
    assert models.model_identity(bundled) == identity
    from tunebook.train import replay

    # its general answers ship with the package under the name its identity gives them (no 280 s on a new laptop)
    assert (replay.SHIPPED_ANSWERS / replay._cache_file(identity).name).is_file()


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_label_scoring_on_the_real_model_matches_full_sequences(bundled, quantization):
    card = job.load_job_card(EXAMPLE / "job.yaml")
    examples, _ = data.load_examples(card)
    texts = examples["text"].head(3).tolist()
    model, tokenizer = predict.load_for_inference(bundled, quantization=quantization)
    cached = decoding.label_log_likelihoods(model, tokenizer, card, texts, batch_size=3, progress=False)
    for i, text in enumerate(texts):
        prompt = prompts.encode_prompt(tokenizer, prompts.build_messages(card, text))
        for j, label in enumerate(card.label_names):
            answer = prompts.encode_target(tokenizer, label)
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), -1)
            full = sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(answer))
            assert cached[i, j] == pytest.approx(full, abs=1e-2)
