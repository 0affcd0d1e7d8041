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
    frame = pd.DataFrame({"id": ["1", "2"], "text": ["hello", "refund please"], "target": ["billing", "billing"], "tags": ["", "hard"]})
    result = predict.predict(model, tokenizer, card, frame, progress=False)
    assert set(result["prediction"]) <= set(card.label_names)
    probs = result[[f"p_{name}" for name in card.label_names]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (result["confidence"] == probs.max(axis=1).round(6)).all()


def test_missing_adapter_is_reported(tiny_model, tmp_path):
    from tunebook.errors import TunebookError

    with pytest.raises(TunebookError, match="no trained model in .*adapter_config.json missing.*run 03_train_qlora first"):
        predict.load_for_inference(tiny_model, tmp_path)


@pytest.fixture(scope="module")
def tools_card():
    return job.load_job_card(EXAMPLE.parent / "support_tools" / "job.yaml")


def test_generation_is_batched_greedy_and_stops_at_end_of_turn(card, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts = ["first ticket", "a second, longer ticket about something else entirely"]
    together = predict.generate(model, tokenizer, card, texts, batch_size=2, max_new_tokens=8, progress=False)
    alone = [predict.generate(model, tokenizer, card, [t], batch_size=1, max_new_tokens=8, progress=False)[0] for t in texts]
    assert together == alone  # left padding does not change what is generated
    assert all("<|im_end|>" not in answer for answer in together)


def test_tool_selection_scores_the_tool_then_generates_its_arguments(tools_card, model_and_tokenizer):
    import pandas as pd

    model, tokenizer = model_and_tokenizer
    frame = pd.DataFrame({"id": ["1"], "text": ["where is A12345"], "target": ['{"tool": "track_parcel", "arguments": {}}'], "tags": [""]})
    result = predict.predict(model, tokenizer, tools_card, frame, progress=False, max_new_tokens=4)
    chosen, probs = predict.choose(model, tokenizer, tools_card, frame["text"].tolist(), progress=False)
    assert result["prediction"][0].startswith(prompts.tool_prefix(chosen[0]))
    assert probs.shape == (1, len(tools_card.tools)) and probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_few_shot_examples_come_before_the_input(card, tokenizer):
    import pandas as pd

    train = pd.DataFrame({"text": [f"t{i}" for i in range(6)], "target": ["billing", "billing", "technical", "technical", "account", "shipping"]})
    shots = prompts.pick_shots(card, train, 3, seed=0)
    assert len({target for _, target in shots}) == 3  # different labels first
    rendered = prompts.render_text(tokenizer, card, "the input", shots)
    for text, target in shots:
        assert f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n{target}<|im_end|>" in rendered
    assert rendered.index(shots[-1][1]) < rendered.index("the input")
