"""Label scoring: one shared prompt pass, every label scored, equal to scoring each sequence in full."""

import numpy as np
import pytest
import torch

from tunebook import job, predict, prompts

from conftest import EXAMPLE


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    return predict.load_for_inference(tiny_model)


def full_sequence_scores(model, tokenizer, card, text):
    prompt = prompts.encode_prompt(tokenizer, prompts.build_messages(card, text))
    scores = []
    for label in card.label_names:
        answer = prompts.encode_target(tokenizer, label)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), -1)
        scores.append(sum(logp[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(answer)))
    return scores


def test_cached_scoring_equals_full_sequence_scoring(card, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts = ["short", "a much longer ticket about a double charge on my invoice for March", "where is my parcel #A1"]
    cached = predict.label_log_likelihoods(model, tokenizer, card, texts, batch_size=2, progress=False)
    expected = np.array([full_sequence_scores(model, tokenizer, card, t) for t in texts])
    np.testing.assert_allclose(cached, expected, atol=2e-4)


def test_classify_returns_valid_labels_with_probabilities(card, model_and_tokenizer):
    import pandas as pd

    model, tokenizer = model_and_tokenizer
    frame = pd.DataFrame({"id": ["1", "2"], "text": ["hello", "refund please"], "label": ["billing", "billing"], "tags": ["", "hard"]})
    result = predict.classify(model, tokenizer, card, frame, progress=False)
    assert set(result["prediction"]) <= set(card.label_names)
    probs = result[[f"p_{name}" for name in card.label_names]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (result["confidence"] == probs.max(axis=1).round(6)).all()


def test_missing_adapter_is_reported(tiny_model, tmp_path):
    from tunebook.errors import TunebookError

    with pytest.raises(TunebookError, match="no adapter in .*run 03_train_qlora first"):
        predict.load_for_inference(tiny_model, tmp_path)
