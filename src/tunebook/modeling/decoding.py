"""The forward passes behind prediction: fixed answers scored with the shared prompt prefix computed once (a tree
of candidate continuations), and batched greedy generation that stops at the end of the answer."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from tunebook.card.schema import JobCard
from tunebook.card.tasks import task_of
from tunebook.errors import TunebookError
from tunebook.modeling.models import cache_argument
from tunebook.modeling.prompts import build_messages, encode_prompt, encode_target, end_of_turn_id, tool_prefix

Shots = Sequence[tuple[str, str]] | Sequence[Sequence[tuple[str, str]]]
"""Worked examples: one list of (text, target) pairs for every input, or one such list per input."""

MIN_SHARED_PREFIX = 16  # shorter common prompt starts are not worth a separate pass


def _shots_per_text(shots: Shots | None, n: int) -> list[list[tuple[str, str]]]:
    """One list of worked examples per input, from either a shared list or a list per input."""
    shots = list(shots or [])
    if not shots:
        return [[] for _ in range(n)]
    first = shots[0]
    if isinstance(first, (tuple, list)) and len(first) == 2 and all(isinstance(x, str) for x in first):
        shared = [(text, target) for text, target in shots]
        return [shared] * n
    if len(shots) != n:
        raise TunebookError(f"shots per example: got {len(shots)} lists of worked examples for {n} inputs.")
    return [[(text, target) for text, target in per_text] for per_text in shots]


def _pad(sequences: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _candidates(tokenizer: PreTrainedTokenizerBase, card: JobCard) -> list[list[int]]:
    if not task_of(card).choice_is_answer:  # a tool: its call starts with it, and the arguments follow
        return [tokenizer(tool_prefix(name), add_special_tokens=False)["input_ids"] for name in card.choices]
    return [encode_target(tokenizer, name) for name in card.choices]


def _cache_of(out) -> Cache:
    return getattr(out, "cache", None) or out.past_key_values


def _common_prefix_length(prompts: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving every prompt at least one token of its own."""
    if len(prompts) < 2:
        return 0
    first = prompts[0]
    length = min(len(p) for p in prompts) - 1
    for prompt in prompts[1:]:
        same = 0
        while same < length and prompt[same] == first[same]:
            same += 1
        length = same
    return length


def _prefix_cache(model: PreTrainedModel, tokens: list[int]) -> DynamicCache | None:
    """The key/value cache of ``tokens``, or None when too short to share or of a kind (sliding window, linear
    attention) that cannot be copied per batch."""
    if len(tokens) < MIN_SHARED_PREFIX:
        return None
    ids = torch.tensor([tokens], dtype=torch.long, device=next(model.parameters()).device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
    cache = _cache_of(out)
    if isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers):
        return cache
    return None


class PromptPrefix:
    """The key/value cache of the prompt start every input of a job shares (chat header and system prompt), computed
    once for a loaded model and reused by every later call: a service pays for its system prompt once, not per request.
    """

    @torch.no_grad()
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, card: JobCard):
        probes = [encode_prompt(tokenizer, build_messages(card, text)) for text in ("a", "b")]
        self.model, self.tokens = model, probes[0][: _common_prefix_length(probes)]
        self.cache = _prefix_cache(model, self.tokens)

    def covers(self, model: PreTrainedModel, prompts: list[list[int]]) -> bool:
        """Whether every prompt continues this prefix on this model (prompts with other worked examples may not)."""
        n = len(self.tokens)
        return (
            self.cache is not None
            and model is self.model
            and all(len(p) > n and p[:n] == self.tokens for p in prompts)
        )


class _Runner:
    """Runs batches of prompts that may continue one shared prefix, whose key/value cache is computed once (or was,
    for every call, by a ``PromptPrefix``).

    Layout of a batch: [shared prefix][left padding][each prompt's own tokens], with an attention mask that is 0 on
    the padding and positions that continue the prefix without gaps, so every row sees exactly its own prompt.
    """

    def __init__(
        self, model: PreTrainedModel, pad_id: int, prompts: list[list[int]], prefix: PromptPrefix | None = None
    ):
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.cache_arg = cache_argument(model)
        if prefix is not None and prefix.covers(model, prompts):
            self.length, self.cache = len(prefix.tokens), prefix.cache
        else:
            self.length = _common_prefix_length(prompts)
            self.cache = _prefix_cache(model, prompts[0][: self.length])
            self.length = self.length if self.cache is not None else 0

    def inputs(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """A batch's own tokens (left-padded), its attention mask over the prefix and them, their positions, and the
        cache argument (a fresh copy of the prefix cache per row, since a forward pass extends the cache it gets)."""
        p = self.length
        ids, own = _pad([prompt[p:] for prompt in prompts], self.pad_id, left=True)
        ids, own = ids.to(self.device), own.to(self.device)
        positions = (p + own.cumsum(-1) - 1).clamp(min=0)
        extra = {}
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(len(prompts))
            extra = {self.cache_arg: cache}
            own = torch.cat([torch.ones((len(prompts), p), dtype=own.dtype, device=self.device), own], dim=1)
        return ids, own, positions, extra

    def forward(self, prompts: list[list[int]]) -> tuple[torch.Tensor, Cache, torch.Tensor, torch.Tensor]:
        """Run a batch; return the last position's float32 logits, the cache, the attention mask so far and each
        row's next position."""
        ids, mask, positions, extra = self.inputs(prompts)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **extra
        )
        return out.logits[:, -1].float(), _cache_of(out), mask, positions[:, -1] + 1


def _batches(runner: _Runner, prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of the prompts in batches of similar length (less padding); results go back in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) - runner.length)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class _CandidateTree:
    """The candidates' distinct proper prefixes as a token trie, fed in the same forward pass as the prompts' own
    tokens.

    A candidate's first token is scored from the prompt's last position; its token j from the trie node of its first
    j tokens. Each node sees its row's prompt and its own ancestors (a 4D mask), so a prompt's tokens run once for all
    candidates, candidates that share a start (tool calls) share those tokens, and the model's weights are read once
    per batch rather than once for the prompts and again for the candidates (on a CPU that read is most of a pass).
    """

    def __init__(self, candidates: list[list[int]], device: torch.device):
        nodes: dict[tuple[int, ...], int] = {}
        tokens, ancestors = [], []
        for cand in candidates:
            for j in range(1, len(cand)):
                key = tuple(cand[:j])
                if key not in nodes:
                    nodes[key] = len(tokens)
                    tokens.append(cand[j - 1])
                    ancestors.append([nodes[key[:i]] for i in range(1, j + 1)])  # itself included
        self.n = len(tokens)
        self.first = torch.tensor([cand[0] for cand in candidates], dtype=torch.long, device=device)
        self.tokens = torch.tensor(tokens, dtype=torch.long, device=device)
        self.depth = torch.tensor([len(a) - 1 for a in ancestors], dtype=torch.long, device=device)
        self.sees = torch.zeros((self.n, self.n), dtype=torch.bool, device=device)
        for i, seen in enumerate(ancestors):
            self.sees[i, seen] = True
        pairs = [
            (c, nodes[tuple(cand[:j])], cand[j]) for c, cand in enumerate(candidates) for j in range(1, len(cand))
        ]
        self.owner, self.node, self.target = (
            (torch.tensor(col, dtype=torch.long, device=device) for col in zip(*pairs)) if pairs else (None,) * 3
        )

    def _allowed(self, mask: torch.Tensor, width: int) -> torch.Tensor:
        """Which keys each query sees, (b, width + n, prefix + width + n): a prompt token its prefix and its earlier
        tokens (padding only itself), a trie node the whole prompt and its ancestors."""
        b, device = mask.shape[0], mask.device
        seen = mask.bool()
        own_keys = seen[:, -width:]
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        prompt_rows = torch.cat(
            [
                seen[:, None, :-width].expand(b, width, -1),
                (causal & own_keys[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device),
                torch.zeros((b, width, self.n), dtype=torch.bool, device=device),
            ],
            dim=-1,
        )
        node_rows = torch.cat([seen[:, None, :].expand(b, self.n, -1), self.sees.expand(b, -1, -1)], dim=-1)
        return torch.cat([prompt_rows, node_rows], dim=1)

    def scores(self, runner: _Runner, prompts: list[list[int]]) -> torch.Tensor:
        """Summed log-probabilities (b, k) of the candidates after each prompt, from one forward pass."""
        ids, mask, positions, extra = runner.inputs(prompts)
        b, width = ids.shape
        dtype = runner.model.get_input_embeddings().weight.dtype
        allowed = self._allowed(mask, width)
        additive = torch.zeros(allowed.shape, dtype=dtype, device=runner.device).masked_fill_(
            ~allowed, torch.finfo(dtype).min
        )
        out = runner.model(
            input_ids=torch.cat([ids, self.tokens.expand(b, -1)], dim=1),
            attention_mask=additive[:, None],
            position_ids=torch.cat([positions, positions[:, -1:] + 1 + self.depth], dim=1),
            logits_to_keep=self.n + 1,  # the prompt's last position, then every node
            **extra,
        )
        logits = out.logits.float()
        total = torch.log_softmax(logits[:, 0], dim=-1)[:, self.first]
        if self.n == 0:
            return total
        picked = (
            torch.log_softmax(logits[:, 1:][:, self.node], dim=-1)
            .gather(2, self.target.expand(b, -1)[..., None])
            .squeeze(-1)
        )
        return total.index_add(1, self.owner, picked)


TREE_ATTENTION = ("sdpa", "eager")  # attention implementations that take a 4D mask as given (others repeat the cache)


@torch.no_grad()
def label_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    texts: list[str],
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = True,
    shots: Shots = (),
    prefix: PromptPrefix | None = None,
) -> np.ndarray:
    """Log-likelihood of every allowed answer for each text, shape (n_texts, n_choices).

    Classification scores each label plus the end-of-turn token; tool selection scores each tool's call prefix.
    The prompt start shared by all texts (chat header, system prompt, shared worked examples) runs once; each batch
    then runs only its own tokens, with the candidates' tokens in the same pass (attention without 4D masks: in a
    second pass, over the batch's cache repeated per candidate).
    ``shots``: one list of (text, target) pairs for every text, or one list per text. ``prefix``: the shared prompt
    start's cache computed once for this model (a service's), used where every prompt continues it.
    """
    per_text = _shots_per_text(shots, len(texts))
    prompts = [encode_prompt(tokenizer, build_messages(card, t, s))[-max_length:] for t, s in zip(texts, per_text)]
    scores = np.zeros((len(texts), len(card.choices)), dtype=np.float64)
    if not prompts:
        return scores
    runner = _Runner(model, tokenizer.pad_token_id, prompts, prefix)
    dev = runner.device
    candidates = _candidates(tokenizer, card)
    tree = (
        _CandidateTree(candidates, dev)
        if getattr(model.config, "_attn_implementation", None) in TREE_ATTENTION
        else None
    )
    k = len(candidates)
    cand_ids, cand_mask = (t.to(dev) for t in _pad(candidates, tokenizer.pad_token_id, left=False))
    width = cand_ids.shape[1]
    batches = _batches(runner, prompts, batch_size)
    for rows in tqdm(batches, desc="scoring labels", disable=not progress, total=len(batches)):
        b = len(rows)
        if tree is not None:
            scores[rows] = tree.scores(runner, [prompts[i] for i in rows]).cpu().numpy()
            continue
        logits, cache, mask, next_position = runner.forward([prompts[i] for i in rows])
        first = torch.log_softmax(logits, dim=-1)
        first = first.repeat_interleave(k, dim=0)  # one row per (prompt, candidate), each with its own cache copy
        cache.batch_repeat_interleave(k)
        ids2 = cand_ids.repeat(b, 1)
        mask2 = torch.cat([mask.repeat_interleave(k, dim=0), cand_mask.repeat(b, 1)], dim=1)
        pos2 = next_position.repeat_interleave(k)[:, None] + torch.arange(width, device=dev)[None, :]
        out2 = model(input_ids=ids2, attention_mask=mask2, position_ids=pos2, **{runner.cache_arg: cache})
        rest = torch.log_softmax(out2.logits[:, :-1].float(), dim=-1)
        token_lp = torch.cat([first.gather(1, ids2[:, :1]), rest.gather(2, ids2[:, 1:, None]).squeeze(-1)], dim=1)
        total = (token_lp * cand_mask.repeat(b, 1)).sum(-1).view(b, k)
        scores[rows] = total.cpu().numpy()
    return scores


def _complete_json(text: str) -> str | None:
    """The text up to the end of the JSON object it starts with (after whitespace), if that object is complete."""
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        value, end = _JSON.raw_decode(text)
    except ValueError:
        return None
    return text[:end] if isinstance(value, dict) else None


_JSON = json.JSONDecoder()


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    card: JobCard,
    texts: list[str],
    prefixes: list[str] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    progress: bool = True,
    shots: Shots = (),
    prefix: PromptPrefix | None = None,
) -> list[str]:
    """Greedy answers, batched over one shared prompt prefix and a KV cache; each continues its prefix if given.

    A row stops at the end-of-turn token, after ``max_new_tokens`` tokens, or (extraction and tool selection) as
    soon as its text, prefix included, holds one complete JSON object: the answer is then that object's text.
    Without the JSON stop the answers equal ``model.generate(do_sample=False)`` with the same budget. ``prefix``: as
    for ``label_log_likelihoods``. (One function:
    the batch loop, its cache and the per-row stop state are one piece of decoding state.)
    """
    prefixes = prefixes or [""] * len(texts)
    per_text = _shots_per_text(shots, len(texts))
    prompts = [
        encode_prompt(tokenizer, build_messages(card, text, s))
        + tokenizer(prefix, add_special_tokens=False)["input_ids"]
        for text, prefix, s in zip(texts, prefixes, per_text)
    ]
    if not prompts:
        return []
    json_stop = task_of(card).json_answer
    stop = end_of_turn_id(tokenizer)
    runner = _Runner(model, tokenizer.pad_token_id, prompts, prefix)
    closes: dict[int, bool] = {}  # token id -> whether its text has a closing brace

    def closes_object(token: int) -> bool:
        if token not in closes:
            closes[token] = "}" in tokenizer.decode([token])
        return closes[token]

    answers: list[str | None] = [None] * len(texts)
    generated: list[list[int]] = [[] for _ in texts]
    batches = _batches(runner, prompts, batch_size)
    for rows in tqdm(batches, desc="generating", disable=not progress, total=len(batches)):
        logits, cache, mask, next_position = runner.forward([prompts[i] for i in rows])
        running = list(rows)  # prompt index of each cache row
        for step in range(max_new_tokens):
            tokens = logits.argmax(dim=-1)
            keep = []
            for j, (row, token) in enumerate(zip(running, tokens.tolist())):
                if token == stop:
                    continue
                generated[row].append(token)
                if json_stop and closes_object(token):
                    found = _complete_json(prefixes[row] + tokenizer.decode(generated[row], skip_special_tokens=True))
                    if found is not None:
                        answers[row] = found
                        continue
                keep.append(j)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(running):
                index = torch.tensor(keep, dtype=torch.long, device=runner.device)
                cache.batch_select_indices(index)
                mask, next_position, tokens = mask[index], next_position[index], tokens[index]
                running = [running[j] for j in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_position[:, None],
                use_cache=True,
                **{runner.cache_arg: cache},
            )
            cache, logits, next_position = _cache_of(out), out.logits[:, -1].float(), next_position + 1
    return [
        answer if answer is not None else (prefix + tokenizer.decode(row, skip_special_tokens=True)).strip()
        for answer, prefix, row in zip(answers, prefixes, generated)
    ]
