"""Label scoring: one shared prompt pass, every label scored, equal to scoring each sequence in full."""

import numpy as np
import pytest
import torch
from conftest import EXAMPLE

from tunebook.card import schema as job
from tunebook.modeling import decoding, predict, prompts


@pytest.fixture(scope="module")
def card():
    return job.load_job_card(EXAMPLE / "job.yaml")


@pytest.fixture(scope="module")
def tools_card():
    return job.load_job_card(EXAMPLE.parent / "support_tools" / "job.yaml")


@pytest.fixture(scope="module")
def extraction_card():
    return job.load_job_card(EXAMPLE.parent / "order_extraction" / "job.yaml")


def in_float32(model):
    """These tests check the scoring and generation algorithms (caches, padding, batching), which must be exact on
    any device: they compare in float32, where a GPU's bfloat16 rounding cannot flip a near-tie."""
    return model.float()


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    model, tokenizer = predict.load_for_inference(tiny_model)
    return in_float32(model), tokenizer


def full_sequence_scores(model, tokenizer, card, text, shots=()):
    """Each candidate scored on its own, the whole prompt plus the answer in one pass: no cache, no padding."""
    prompt = prompts.encode_prompt(tokenizer, prompts.build_messages(card, text, shots))
    scores = []
    for answer in decoding._candidates(tokenizer, card):
        with torch.no_grad():  # the logits of the positions that predict the answer's tokens only (fast)
            ids = torch.tensor([prompt + answer], device=model.device)
            logits = model(input_ids=ids, logits_to_keep=len(answer) + 1).logits[0, :-1]
        logp = torch.log_softmax(logits.float(), -1)
        scores.append(sum(logp[j, tok].item() for j, tok in enumerate(answer)))
    return scores


TEXTS = ["short", "a much longer ticket about a double charge on my invoice for March", "where is my parcel #A1"]
SHOTS = [("my card was charged twice", "billing"), ("the app crashes on start", "technical")]
PER_TEXT_SHOTS = [[], [("I forgot my password", "account")], SHOTS]


@pytest.fixture(scope="module")
def eager_model(tiny_model):
    model, _ = predict.load_for_inference(tiny_model)
    model.set_attn_implementation("eager")
    return in_float32(model)


PATHS = {  # how label_log_likelihoods runs, by what a test changes
    "prefix-cache": {},
    "no-prefix-cache": {"MIN_SHARED_PREFIX": 10**6},  # prompts too different to share a start
    "cache-per-candidate": {
        "TREE_ATTENTION": ()
    },  # attention without 4D masks (flash): the cache repeated per candidate
    "eager-attention": {},
}


@pytest.mark.parametrize("shots", [(), SHOTS, PER_TEXT_SHOTS], ids=["zero-shot", "fixed-shots", "per-example-shots"])
@pytest.mark.parametrize("path", list(PATHS))
def test_cached_scoring_equals_full_sequence_scoring(card, model_and_tokenizer, eager_model, shots, path, monkeypatch):
    model, tokenizer = model_and_tokenizer
    model = eager_model if path == "eager-attention" else model
    assert model.config._attn_implementation == ("eager" if path == "eager-attention" else "sdpa")
    per_text = shots if shots is PER_TEXT_SHOTS else [shots] * len(TEXTS)
    encoded = [prompts.encode_prompt(tokenizer, prompts.build_messages(card, t, s)) for t, s in zip(TEXTS, per_text)]
    assert len({len(e) for e in encoded}) == len(TEXTS)  # batches of unequal lengths: padding is exercised
    assert decoding._common_prefix_length(encoded) >= decoding.MIN_SHARED_PREFIX  # the shared prefix is used
    for name, value in PATHS[path].items():
        monkeypatch.setattr(decoding, name, value)
    cached = decoding.label_log_likelihoods(model, tokenizer, card, TEXTS, batch_size=2, progress=False, shots=shots)
    expected = np.array([full_sequence_scores(model, tokenizer, card, t, s) for t, s in zip(TEXTS, per_text)])
    np.testing.assert_allclose(cached, expected, atol=1e-4)


@pytest.mark.parametrize("path", ["prefix-cache", "cache-per-candidate"])
def test_tool_scoring_with_a_shared_prefix_equals_full_sequence_scoring(
    tools_card, model_and_tokenizer, path, monkeypatch
):
    model, tokenizer = model_and_tokenizer
    for name, value in PATHS[path].items():
        monkeypatch.setattr(decoding, name, value)
    texts = ["where is A12345", "please reset the password of my account, I cannot log in since Monday", "refund"]
    cached = decoding.label_log_likelihoods(model, tokenizer, tools_card, texts, batch_size=2, progress=False)
    expected = np.array([full_sequence_scores(model, tokenizer, tools_card, t) for t in texts])
    np.testing.assert_allclose(cached, expected, atol=1e-4)


def test_candidates_sharing_a_start_share_its_tokens(tools_card, card, tokenizer):
    tools = decoding._candidates(tokenizer, tools_card)
    tree = decoding._CandidateTree(tools, torch.device("cpu"))
    start = len(set.intersection(*(set(enumerate(t)) for t in tools)))  # '{"tool": "' is common to every call
    assert start >= 3 and tree.n == start + sum(len(t) - 1 - start for t in tools)
    labels = decoding._candidates(tokenizer, card)
    assert decoding._CandidateTree(labels, torch.device("cpu")).n <= sum(len(t) - 1 for t in labels)


def test_shots_per_example_must_match_the_inputs(card, model_and_tokenizer):
    from tunebook.errors import TunebookError

    model, tokenizer = model_and_tokenizer
    with pytest.raises(TunebookError, match="got 2 lists of worked examples for 3 inputs"):
        decoding.label_log_likelihoods(model, tokenizer, card, TEXTS, progress=False, shots=[SHOTS, SHOTS])


def test_answer_budget_is_the_longest_answer_plus_a_quarter_plus_8(tokenizer):
    targets = ["billing", '{"order_id": "A1", "product": "french press", "quantity": 2}', "technical"]
    longest = len(prompts.encode_target(tokenizer, targets[1]))  # the end-of-turn token counts: the model must emit it
    assert predict.answer_budget(tokenizer, targets) == int(np.ceil(longest * 1.25 + 8))
    assert predict.answer_budget(tokenizer, ["a"]) == 11  # 2 tokens * 1.25 + 8 = 10.5, rounded up
    from tunebook.errors import TunebookError

    with pytest.raises(TunebookError, match="at least one training answer"):
        predict.answer_budget(tokenizer, [])


def test_classify_returns_valid_labels_with_probabilities(card, model_and_tokenizer):
    import pandas as pd

    model, tokenizer = model_and_tokenizer
    frame = pd.DataFrame(
        {"id": ["1", "2"], "text": ["hello", "refund please"], "target": ["billing", "billing"], "tags": ["", "hard"]}
    )
    result = predict.predict(model, tokenizer, card, frame, progress=False)
    assert set(result["prediction"]) <= set(card.label_names)
    probs = result[[f"p_{name}" for name in card.label_names]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (result["confidence"] == probs.max(axis=1).round(6)).all()


def test_missing_adapter_is_reported(tiny_model, tmp_path):
    from tunebook.errors import TunebookError

    with pytest.raises(
        TunebookError, match="no trained model in .*adapter_config.json missing.*run 03_train_qlora first"
    ):
        predict.load_for_inference(tiny_model, tmp_path)


def test_generation_is_batched_greedy_and_stops_at_end_of_turn(card, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts = ["first ticket", "a second, longer ticket about something else entirely"]
    together = decoding.generate(model, tokenizer, card, texts, batch_size=2, max_new_tokens=8, progress=False)
    alone = [
        decoding.generate(model, tokenizer, card, [t], batch_size=1, max_new_tokens=8, progress=False)[0]
        for t in texts
    ]
    assert together == alone  # left padding does not change what is generated
    assert all("<|im_end|>" not in answer for answer in together)


def test_tool_selection_scores_the_tool_then_generates_its_arguments(tools_card, model_and_tokenizer):
    import pandas as pd

    model, tokenizer = model_and_tokenizer
    frame = pd.DataFrame(
        {
            "id": ["1"],
            "text": ["where is A12345"],
            "target": ['{"tool": "track_parcel", "arguments": {}}'],
            "tags": [""],
        }
    )
    result = predict.predict(model, tokenizer, tools_card, frame, progress=False, max_new_tokens=4)
    chosen, probs = predict.choose(model, tokenizer, tools_card, frame["text"].tolist(), progress=False)
    assert result["prediction"][0].startswith(prompts.tool_prefix(chosen[0]))
    assert probs.shape == (1, len(tools_card.tools)) and probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_few_shot_examples_come_before_the_input(card, tokenizer):
    import pandas as pd

    train = pd.DataFrame(
        {
            "text": [f"t{i}" for i in range(6)],
            "target": ["billing", "billing", "technical", "technical", "account", "shipping"],
        }
    )
    shots = prompts.pick_shots(card, train, 3, seed=0)
    assert len({target for _, target in shots}) == 3  # different labels first
    rendered = prompts.render_text(tokenizer, card, "the input", shots)
    for text, target in shots:
        assert f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n{target}<|im_end|>" in rendered
    assert rendered.index(shots[-1][1]) < rendered.index("the input")


def end_of_turn_when_top_token_divisible_by(model, tokenizer, divisor):
    """Make the tiny model end its turn at varied steps: whenever its top token id is divisible by ``divisor``,
    the end-of-turn token wins instead (a function of each row's own logits, so batching cannot change it)."""
    stop = prompts.end_of_turn_id(tokenizer)

    def hook(module, inputs, logits):
        logits = logits.clone()
        top = logits.argmax(-1)
        best = logits.max(-1).values
        logits[..., stop] = torch.where(top % divisor == 0, best + 1.0, logits[..., stop])
        return logits

    return model.get_output_embeddings().register_forward_hook(hook)


@pytest.fixture(scope="module")
def chatty_model(tiny_model):
    """The tiny model with its own random output layer: the tied one just repeats the last token ("\\n")."""
    model, _ = predict.load_for_inference(tiny_model)
    model = in_float32(model)
    weight = model.get_output_embeddings().weight
    own = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    model.get_output_embeddings().weight = torch.nn.Parameter(own.to(weight.device))
    return model


def hf_generate(model, tokenizer, card, text, prefix, budget):
    """The reference: transformers' own greedy generation, one prompt at a time, cut at end of turn."""
    prompt = (
        prompts.encode_prompt(tokenizer, prompts.build_messages(card, text))
        + tokenizer(prefix, add_special_tokens=False)["input_ids"]
    )
    ids = torch.tensor([prompt], device=model.device)
    stop = prompts.end_of_turn_id(tokenizer)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
        )
    row = out[0, ids.shape[1] :].tolist()
    return (
        prefix + tokenizer.decode(row[: row.index(stop)] if stop in row else row, skip_special_tokens=True)
    ).strip(), len(row)


def test_greedy_loop_equals_transformers_generate(card, chatty_model, tokenizer):
    texts = TEXTS + ["ok", "the parcel came broken, the box was wet and the lid cracked; I want a new one"]
    prefixes = ["Sure", "No.", "Maybe later", "The", "billing"]  # different last tokens: different continuations
    handle = end_of_turn_when_top_token_divisible_by(chatty_model, tokenizer, 7)
    try:
        expected = [hf_generate(chatty_model, tokenizer, card, t, p, 12) for t, p in zip(texts, prefixes)]
        ours = decoding.generate(
            chatty_model, tokenizer, card, texts, prefixes, batch_size=3, max_new_tokens=12, progress=False
        )
    finally:
        handle.remove()
    assert ours == [answer for answer, _ in expected]
    assert len({n for _, n in expected}) >= 3  # rows stop at different steps


class Scripted:
    """Make the tiny model continue a token with a fixed next token (a bigram script, keyed on each row's last input),
    then end its turn; counts the tokens each forward pass fed to the model."""

    def __init__(self, model, tokenizer, after: str, continuation: str):
        self.tokens = (
            tokenizer(after, add_special_tokens=False)["input_ids"][-1:]
            + tokenizer(continuation, add_special_tokens=False)["input_ids"]
        )
        assert len(set(self.tokens)) == len(self.tokens)
        self.next = dict(zip(self.tokens, self.tokens[1:] + [prompts.end_of_turn_id(tokenizer)]))
        self.model, self.fed = model, []

    def __enter__(self):
        self.handles = [
            self.model.get_input_embeddings().register_forward_hook(lambda m, inputs, out: self.fed.append(inputs[0])),
            self.model.get_output_embeddings().register_forward_hook(self.force),
        ]
        return self

    def force(self, module, inputs, logits):
        logits = logits.clone()
        for row, token in enumerate(self.fed[-1][:, -1].tolist()):
            if token in self.next:
                logits[row, -1, self.next[token]] = logits[row, -1].max() + 10.0
        return logits

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def test_json_stop_cuts_right_after_the_closing_brace(card, extraction_card, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts = ["two french presses to A12345", "one microfibre cloth, gift wrapped please, by Friday"]
    prefixes = ['{"a": 1,', '{"a": 1;']  # the first continues with the script; the second is never forced
    script = ' "b": 2}. More text'  # "}." is one token: the cut falls inside it
    with Scripted(model, tokenizer, prefixes[0], script) as scripted:
        cut = decoding.generate(
            model, tokenizer, extraction_card, texts, prefixes, batch_size=2, max_new_tokens=20, progress=False
        )
        steps_with_stop = len(scripted.fed)
        uncut = decoding.generate(
            model, tokenizer, card, texts, prefixes, batch_size=2, max_new_tokens=20, progress=False
        )
        steps_without_stop = len(scripted.fed) - steps_with_stop
        alone = decoding.generate(
            model, tokenizer, extraction_card, texts[1:], prefixes[1:], batch_size=1, max_new_tokens=20, progress=False
        )
    assert cut[0] == '{"a": 1, "b": 2}'  # extraction: stopped as soon as the object was complete
    assert uncut[0] == '{"a": 1, "b": 2}. More text'  # classification has no JSON stop: it runs to end of turn
    assert cut[1] == uncut[1] == alone[0] and cut[1].startswith('{"a": 1;')  # the other row ran to the budget
    assert steps_with_stop == steps_without_stop  # the second row kept the batch going either way
    assert all(fed.shape[0] == 1 for fed in scripted.fed[-19:-1])  # finished rows leave the batch


def test_tool_call_stops_when_its_arguments_close_the_object(tools_card, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prefix = prompts.tool_prefix("track_parcel")
    with Scripted(model, tokenizer, prefix, " {}}\nDone") as scripted:
        answer = decoding.generate(
            model, tokenizer, tools_card, ["where is A12345"], [prefix], max_new_tokens=30, progress=False
        )
    assert answer == ['{"tool": "track_parcel", "arguments": {}}']
    assert len(scripted.fed) == 2  # one prompt pass (a single prompt shares no prefix), then one step: " {}", "}"


def test_per_example_shots_in_predict(card, extraction_card, model_and_tokenizer, chatty_model):
    import pandas as pd

    model, tokenizer = model_and_tokenizer
    frame = pd.DataFrame({"id": ["1", "2", "3"], "text": TEXTS, "target": ["billing"] * 3, "tags": [""] * 3})
    per_example = predict.predict(model, tokenizer, card, frame, batch_size=2, progress=False, shots=PER_TEXT_SHOTS)
    one_by_one = pd.concat(
        [
            predict.predict(model, tokenizer, card, frame.iloc[[i]], progress=False, shots=PER_TEXT_SHOTS[i])
            for i in range(3)
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(per_example, one_by_one, atol=1e-5)
    shots = [[("two mugs", '{"product": "mug", "quantity": 2}')], [], [("a lamp", '{"product": "lamp"}')] * 2]
    together = predict.predict(
        chatty_model, tokenizer, extraction_card, frame, batch_size=2, progress=False, shots=shots, max_new_tokens=6
    )
    alone = [
        decoding.generate(chatty_model, tokenizer, extraction_card, [t], max_new_tokens=6, progress=False, shots=s)[0]
        for t, s in zip(TEXTS, shots)
    ]
    assert together["prediction"].tolist() == alone and all(alone)


def test_the_overfitting_check_compares_the_adapter_alone_on_training_and_test_examples(card, model_and_tokenizer):
    """Test predictions made through a rule that leans on the classical model are not the adapter's: the gap is
    measured on the adapter's own answers on both sides."""
    import pandas as pd

    from tunebook.evaluate.step import EvaluateSettings, TunedModel, _overfitting
    from tunebook.modeling.decision_rule import DecisionRule
    from tunebook.scoring import metrics

    model, tokenizer = model_and_tokenizer

    def tickets(start):
        return pd.DataFrame(
            {
                "id": [f"t{i}" for i in range(start, start + 12)],
                "text": [f"ticket number {i} about my order" for i in range(start, start + 12)],
                "target": [card.choices[i % len(card.choices)] for i in range(12)],
                "tags": "",
            }
        )

    train, test = tickets(0), tickets(100)
    mixed = test.assign(prediction=test["target"])  # the classical model, leaned on wholly, was right everywhere
    rule = DecisionRule(choices=card.choices, mix_weight=1.0, mix_with="classical")
    tuned = TunedModel(model, tokenizer, None, "tiny", 8)
    probs = predict.choose(model, tokenizer, card, test["text"].tolist(), progress=False)[1]  # as 04 computed them
    found = _overfitting(tuned, card, train, test, EvaluateSettings(train_sample=12), mixed, rule, probs)
    own = metrics.evaluate(card, predict.predict(model, tokenizer, card, test, max_new_tokens=8))
    assert found.test == pytest.approx(own[own["primary"]]) and found.test < 1.0
    without_rule = _overfitting(tuned, card, train, test, EvaluateSettings(train_sample=12), mixed, None, None)
    assert without_rule.test == 1.0  # with no rule, the test predictions are the adapter's own
