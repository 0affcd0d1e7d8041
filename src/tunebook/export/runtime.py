"""Answering through llama.cpp (the ``llama-cpp-python`` bindings) as a GGUF file is run: the file's own chat
template, BOS rule and end-of-generation tokens; fixed answers chosen by candidate log-probabilities or by a grammar."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from tunebook.errors import TunebookError

INSTALL_HINT = (
    "the GGUF checks need llama.cpp's Python bindings: `make llama-cpp` builds and installs them (about 8 minutes on "
    "2 cores, once; the wheel is kept in the wheelhouse), or pip install 'llama-cpp-python>=0.3.30,<0.4'."
)


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_threads() -> int:
    """llama.cpp threads from the cores not busy now (1-minute load average), at least 1."""
    cores = usable_cores()
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - busy)))


def llama_cpp_module():
    """The ``llama_cpp`` bindings, or an error saying how to install them."""
    try:
        # deferred: the bindings are an optional, compiled dependency that only the GGUF checks need
        import llama_cpp
    except ImportError:
        raise TunebookError(INSTALL_HINT) from None
    return llama_cpp


@dataclass
class Counter:
    """Tokens llama.cpp processed and the seconds it took."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None


@dataclass
class GgufRuntime:
    """One GGUF file loaded in llama.cpp to answer the job's prompts as a llama.cpp or Ollama deployment would."""

    path: Path
    threads: int
    n_ctx: int = 2048
    counter: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        llama_cpp = llama_cpp_module()
        self.llm = llama_cpp.Llama(
            model_path=str(self.path),
            n_ctx=self.n_ctx,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            logits_all=True,  # candidate scoring reads the log-probabilities at every candidate token
            verbose=False,
        )
        self.metadata = dict(self.llm.metadata)
        vocab = self.llm._model
        self.bos_text = vocab.token_get_text(self.llm.token_bos()) if self.llm.token_bos() != -1 else ""
        self.eos_text = vocab.token_get_text(self.llm.token_eos()) if self.llm.token_eos() != -1 else ""

    # ---- what the runtime does with a request
    def rendered(self, messages: list[dict[str, str]]) -> str:
        """A chat request rendered by the file's own chat template, as llama.cpp's server renders it."""
        template = self.metadata.get("tokenizer.chat_template")
        if not template:
            raise TunebookError(f"{self.path.name} carries no chat template (tokenizer.chat_template).")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # deferred: with the bindings, above

        return Jinja2ChatFormatter(template=template, eos_token=self.eos_text, bos_token=self.bos_text)(
            messages=messages
        ).prompt

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids llama.cpp runs for a chat request: the file's own template, then its BOS rule."""
        # add_bos asks for llama.cpp's rule: a BOS in front only where the file says add_bos_token
        return self.llm.tokenize(self.rendered(messages).encode("utf-8"), add_bos=True, special=True)

    def is_end(self, token: int) -> bool:
        """Whether llama.cpp ends generation at ``token`` (an end-of-generation token of the file)."""
        return bool(llama_cpp_module().llama_vocab_is_eog(self.llm._model.vocab, token))

    def tokenize(self, text: str) -> list[int]:
        """``text`` as llama.cpp tokenizes it, special tokens parsed, nothing added."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    # ---- answering
    def _eval_prompt(self, prompt: list[int]) -> None:
        """Evaluate ``prompt``, reusing the cache of the previous prompt's shared start."""
        shared = 0
        previous = self.llm.input_ids[: self.llm.n_tokens]
        for a, b in zip(previous, prompt):
            if a != b:
                break
            shared += 1
        self.llm.n_tokens = min(shared, len(prompt) - 1)  # the last prompt token runs again for its logits
        start = time.perf_counter()
        self.llm.eval(prompt[self.llm.n_tokens :])
        self._count(len(prompt) - shared, start)

    def _count(self, tokens: int, start: float) -> None:
        self.counter.tokens += tokens
        self.counter.seconds += time.perf_counter() - start

    def score_candidates(self, prompt: list[int], candidates: list[list[int]]) -> np.ndarray:
        """Summed log-probability of each candidate's tokens after ``prompt`` (as tunebook scores fixed answers)."""
        self._eval_prompt(prompt)
        n = len(prompt)
        first = log_softmax(self.llm.scores[n - 1].astype(np.float64))
        totals = []
        for candidate in candidates:
            total = float(first[candidate[0]])
            if len(candidate) > 1:
                self.llm.n_tokens = n
                start = time.perf_counter()
                self.llm.eval(candidate[:-1])
                self._count(len(candidate) - 1, start)
                rows = log_softmax(self.llm.scores[n : n + len(candidate) - 1].astype(np.float64), axis=-1)
                total += float(rows[np.arange(len(rows)), candidate[1:]].sum())
            totals.append(total)
        self.llm.n_tokens = n
        return np.array(totals)

    def generate(self, prompt: list[int], max_tokens: int, grammar: str | None = None) -> str:
        """Greedy text after ``prompt`` until an end-of-generation token or ``max_tokens`` (optionally under a GBNF
        ``grammar``), as a llama.cpp server answers at temperature 0."""
        llama_cpp = llama_cpp_module()
        self._eval_prompt(prompt)
        start = time.perf_counter()
        out = self.llm.create_completion(
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0.0,
            top_k=1,
            repeat_penalty=1.0,
            grammar=llama_cpp.LlamaGrammar.from_string(grammar, verbose=False) if grammar else None,
        )
        self._count(out["usage"]["completion_tokens"], start)
        return out["choices"][0]["text"]

    def close(self) -> None:
        """Free the model (llama.cpp holds it outside Python's memory accounting)."""
        self.llm.close()


def choices_grammar(answers: list[str]) -> str:
    """A GBNF grammar that admits exactly one of ``answers``."""
    quoted = " | ".join('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in answers)
    return f"root ::= {quoted}\n"
