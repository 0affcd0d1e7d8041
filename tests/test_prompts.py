"""What the model sees: one rendering shared by baseline, training and evaluation."""

import pytest

from tunebook import job, prompts
from tunebook.errors import TunebookError

from conftest import EXAMPLE


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
    features = prompts.encode_example(tokenizer, card, "My parcel is late", "shipping", max_length=512)
    prompt = prompts.encode_prompt(tokenizer, prompts.build_messages(card, "My parcel is late"))
    answer = tokenizer("shipping", add_special_tokens=False)["input_ids"]
    assert features["input_ids"] == prompt + answer + [prompts.end_of_turn_id(tokenizer)]
    supervised = [i for i, label in enumerate(features["labels"]) if label != prompts.IGNORE_INDEX]
    assert supervised == list(range(len(prompt), len(prompt) + len(answer) + 1))
    assert tokenizer.decode([features["input_ids"][i] for i in supervised]) == "shipping<|im_end|>"
    assert prompts.show_supervision(tokenizer, features).endswith("assistant\n[[shipping<|im_end|>]]")


def test_a_long_answer_is_cut_at_the_end_keeping_the_whole_prompt(card, tokenizer):
    prompt = prompts.encode_prompt(tokenizer, prompts.build_messages(card, "My parcel is late"))
    features = prompts.encode_example(tokenizer, card, "My parcel is late", "billing and more words", max_length=len(prompt) + 2)
    assert features["input_ids"][: len(prompt)] == prompt
    assert len(features["input_ids"]) == len(prompt) + 2
    first_two = tokenizer("billing and more words", add_special_tokens=False)["input_ids"][:2]
    assert [t for t, l in zip(features["input_ids"], features["labels"]) if l != -100] == first_two


def test_a_prompt_longer_than_max_length_is_an_error_naming_the_example(card, tokenizer):
    with pytest.raises(TunebookError, match=r"train split, id 7: the prompt alone takes \d+ tokens and MAX_LENGTH is 64.*at least"):
        prompts.encode_example(tokenizer, card, "word " * 600, "feature_request", max_length=64, where="train split, id 7")
