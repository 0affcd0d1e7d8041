"""The Ollama form: a Modelfile beside a GGUF file, and reading one back to render its template as Ollama would."""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from tunebook.card.schema import JobCard
from tunebook.errors import TunebookError
from tunebook.modeling.prompts import build_messages, encode_prompt, end_of_turn_id

# Stand-ins rendered through the training chat template, then replaced by Ollama's variables: the Modelfile's
# template is the training template's own output for one system and one user turn, not a hand-written copy.
_SYSTEM, _PROMPT = "\u0000TUNEBOOK_SYSTEM\u0000", "\u0000TUNEBOOK_PROMPT\u0000"
_VARIABLE = re.compile(r"\{\{-?\s*\.(System|Prompt)\s*-?\}\}")


def ollama_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt format the model was trained with, as an Ollama template over ``.System`` and ``.Prompt``."""
    messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _PROMPT}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if rendered.count(_SYSTEM) != 1 or rendered.count(_PROMPT) != 1:
        raise TunebookError(
            "the tokenizer's chat template does not place one system and one user message in its prompt; "
            "an Ollama template cannot be derived from it."
        )
    if "{{" in rendered.replace(_SYSTEM, "").replace(_PROMPT, ""):
        raise TunebookError("the chat template renders '{{', which Ollama would read as a template action.")
    return rendered.replace(_SYSTEM, "{{ .System }}").replace(_PROMPT, "{{ .Prompt }}")


def _quoted(text: str) -> str:
    if '"""' in text:
        raise TunebookError('a Modelfile value cannot hold three double quotes in a row ("""); change the text.')
    return f'"""{text}"""'


def write_modelfile(
    folder: str | Path, gguf: str, template: str, system: str, stops: list[str], max_tokens: int
) -> Path:
    """A Modelfile in ``folder`` that runs the GGUF file at ``gguf`` (relative to ``folder``, as Ollama reads it)
    greedily with the training template, system prompt and stops."""
    lines = [
        f"FROM {gguf if gguf.startswith(('/', '.')) else './' + gguf}",
        f"TEMPLATE {_quoted(template)}",
        f"SYSTEM {_quoted(system)}",
        *(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops),
        "PARAMETER temperature 0",
        "PARAMETER top_k 1",
        "PARAMETER repeat_penalty 1",
        f"PARAMETER num_predict {max_tokens}",
    ]
    path = Path(folder) / "Modelfile"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_modelfile(path: str | Path) -> dict:
    """A Modelfile's FROM, TEMPLATE, SYSTEM and PARAMETERs (a parameter given twice, such as stop, as a list)."""
    text = Path(path).read_text(encoding="utf-8")
    found: dict = {"parameters": {}}
    pattern = re.compile(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER)\s+(?:"""(.*?)"""|(.*?))\s*$', re.M | re.S)
    for instruction, quoted, plain in pattern.findall(text):
        value = quoted if quoted or plain == "" else plain
        if instruction == "PARAMETER":
            name, _, raw = value.partition(" ")
            raw = raw.strip()
            parsed = json.loads(raw) if raw.startswith('"') else raw
            found["parameters"].setdefault(name, []).append(parsed)
        else:
            found[instruction.lower()] = value
    if "from" not in found or "template" not in found:
        raise TunebookError(f"{path}: a Modelfile needs FROM and TEMPLATE lines.")
    return found


def render_template(template: str, system: str, prompt: str) -> str:
    """The prompt Ollama sends for one request: the template's ``.System`` and ``.Prompt`` filled in."""
    leftover = re.sub(_VARIABLE, "", template)
    if "{{" in leftover:
        raise TunebookError("the template uses Ollama actions other than {{ .System }} and {{ .Prompt }}.")
    return _VARIABLE.sub(lambda m: system if m.group(1) == "System" else prompt, template)


def stop_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The texts Ollama must stop at: the end-of-turn token the model learned to close answers with, and EOS."""
    return list(
        dict.fromkeys(
            t for t in (tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)), tokenizer.eos_token) if t
        )
    )


def check_modelfile(
    path: str | Path, tokenizer: PreTrainedTokenizerBase, card: JobCard, texts: list[str]
) -> list[str]:
    """What in a Modelfile would make Ollama answer otherwise than the model was trained: a template that does not
    render the training prompt token for token for ``texts``, a missing stop, a system prompt that is not the job's."""
    parsed = read_modelfile(path)
    problems = []
    for text in texts:
        rendered = render_template(parsed["template"], parsed.get("system", ""), text)
        if tokenizer(rendered, add_special_tokens=False)["input_ids"] != encode_prompt(
            tokenizer, build_messages(card, text)
        ):
            problems.append("the Modelfile's template, rendered for a test example, is not the training prompt")
            break
    missing = [s for s in stop_tokens(tokenizer) if s not in parsed["parameters"].get("stop", [])]
    if missing:
        problems.append(
            f"missing stop token: the Modelfile has no PARAMETER stop {missing[0]!r}, which the model learned to end "
            "its answers with, so Ollama could keep writing past the answer"
        )
    return problems
