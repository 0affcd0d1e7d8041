"""What the model sees: one rendering shared by baseline, training and evaluation."""

import pytest
from conftest import EXAMPLE

from tunebook.card import schema as job
from tunebook.errors import TunebookError
from tunebook.modeling import prompts


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


def test_system_prompt_lists_every_label_with_its_definition(card):
    text = prompts.system_prompt(card)
    for label in card.labels:
        assert f"- {label.name}: {label.definition}" in text


def test_rendered_prompt_uses_our_system_prompt_not_the_template_default(card, tokenizer):
    rendered = prompts.render_text(tokenizer, card, "My parcel is late")
    assert prompts.system_prompt(card) in rendered
    assert "SmolLM" not in rendered
    assert rendered.endswith("<|im_start|>assistant\n")


def test_only_the_answer_and_end_of_turn_are_supervised(card, tokenizer):
    features = prompts.features_from(
        *prompts.encode_parts(tokenizer, card, "My parcel is late", "shipping"), max_length=512
    )
    prompt = prompts.encode_prompt(tokenizer, prompts.build_messages(card, "My parcel is late"))
    answer = tokenizer("shipping", add_special_tokens=False)["input_ids"]
    assert features["input_ids"] == prompt + answer + [prompts.end_of_turn_id(tokenizer)]
    supervised = [i for i, label in enumerate(features["labels"]) if label != prompts.IGNORE_INDEX]
    assert supervised == list(range(len(prompt), len(prompt) + len(answer) + 1))
    assert tokenizer.decode([features["input_ids"][i] for i in supervised]) == "shipping<|im_end|>"
    assert prompts.show_supervision(tokenizer, features).endswith("assistant\n[[shipping<|im_end|>]]")


def test_a_long_answer_is_cut_at_the_end_keeping_the_whole_prompt(card, tokenizer):
    prompt = prompts.encode_prompt(tokenizer, prompts.build_messages(card, "My parcel is late"))
    features = prompts.features_from(
        *prompts.encode_parts(tokenizer, card, "My parcel is late", "billing and more words"),
        max_length=len(prompt) + 2,
    )
    assert features["input_ids"][: len(prompt)] == prompt
    assert len(features["input_ids"]) == len(prompt) + 2
    first_two = tokenizer("billing and more words", add_special_tokens=False)["input_ids"][:2]
    assert [t for t, label in zip(features["input_ids"], features["labels"]) if label != -100] == first_two


def test_a_prompt_longer_than_max_length_is_an_error_naming_the_example(card, tokenizer):
    import pandas as pd

    from tunebook.train.step import build_features

    rows = pd.DataFrame({"id": ["7", "8"], "text": ["word " * 600, "short"], "target": ["feature_request", "billing"]})
    with pytest.raises(
        TunebookError,
        match=r"1 example\(s\) of the train split .*MAX_LENGTH=300.*Examples: 7 \(\d+ tokens\).*at least \d+",
    ):
        build_features(tokenizer, card, rows, 300, "train")
