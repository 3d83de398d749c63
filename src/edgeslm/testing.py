"""Test your app's code without a model: a scripted backend whose "model" writes the replies you give.

    from edgeslm.testing import scripted_model

    def test_triage_reads_the_priority() -> None:
        model = scripted_model('{"priority": "high", "team": "billing"}')
        assert my_app.triage(model, "I was charged twice!") == ("high", "billing")

The model runs through edgeslm's real :class:`~edgeslm.Model`, decoding loop, grammar constraints,
validation and retries: only the engine is replaced, by one whose next token is the next token of
the script. So a reply that breaks the schema is fixed by the grammar exactly as a real model's
would be, tool calls are parsed from the script in the chosen family's format (``hermes``,
``llama3``, ``phi4``, ``gemma3``, ``generic``), and confidence is high (the script's tokens are
near-certain). It needs no download, no GPU and no llama.cpp: tests run in milliseconds.

The vocabulary is small and byte-level: the 256 bytes, some multi-byte pieces common in tool calls
(so tokens straddle the places where a call begins, as real BPE tokens do), and the control tokens
of the chat formats. Tokenization is greedy longest-match; control-token text is parsed only when
asked (``special=True``), as the real backends do. A model may be given several scripts: it
follows the first one that the reply so far begins (so a retry that the grammar starts differently
can follow another one). Once the reply leaves every script, or the script is done, the
end-of-sequence token is preferred.

:func:`write_script` + :func:`register_scripted` make it an engine of the registry as a plugin would
be: ``edgeslm.load("reply.script.json")`` then opens it (for code that calls ``edgeslm.load`` itself).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InvalidRequestError
from .api.model import Model
from .backends.base import Backend
from .backends.registry import BackendSpec, OpenRequest, register_backend
from .decoding.template import CHATML_TEMPLATE, GEMMA_TEMPLATE, ChatTemplate

__all__ = [
    "MARKERS", "SCRIPTED_SPEC", "TEMPLATES", "FakeVocab", "ScriptedBackend", "register_scripted", "scripted_model",
    "write_script",
]

SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<|tool_call|>",
    "<|/tool_call|>", "<|tool|>", "<|/tool|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
    "<start_of_turn>", "<end_of_turn>",
)
EOG = frozenset({"<|endoftext|>", "<|im_end|>", "<|end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>"})
PIECES = (
    '{"', '"}', "name", '":', '": ', ' "', '",', '", "', "arguments", "parameters", '": {', "}}", ' {"', '":"',
    "```", "```json", "json", "\n\n", "tool_calls", "function", '"type', "type", '[{"', "}]", "}}]", "weather",
    "get_", "city", "Paris", "Oslo", "unit", "celsius", "The", " the", " is", " in", "Sure", "Let", " me",
    " check", ". ", "ing", "tion", " {", " [", "time", "zone", "tool", "_code", ")]", '("', '")', '="', '", ',
)

PHI4_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
                   "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
                   "{% endif %}")
#: A chat template per tool format, as its family writes turns.
TEMPLATES = {"generic": CHATML_TEMPLATE, "hermes": CHATML_TEMPLATE, "phi4": PHI4_TEMPLATE,
             "llama3": LLAMA3_TEMPLATE, "gemma3": GEMMA_TEMPLATE}
#: What each template writes right before the reply.
MARKERS = {"generic": "<|im_start|>assistant\n", "hermes": "<|im_start|>assistant\n", "phi4": "<|assistant|>",
           "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n", "gemma3": "<start_of_turn>model\n"}


#: Tool tags that are one token of the vocabulary; with ``user_defined_tags`` they are *user-defined*
#: tokens, as in Qwen 2.5's GGUF: llama.cpp matches them in plain text too (``special=False``),
#: while llguidance still counts them as special tokens, which only ``<[id]>`` in a grammar matches.
TAGS = ("<tool_call>", "</tool_call>", "<|tool_call|>", "<|/tool_call|>", "<|python_tag|>")


class FakeVocab:
    """Bytes, :data:`PIECES` and :data:`SPECIALS`; greedy longest-match tokenization."""

    def __init__(self, *, user_defined_tags: bool = False) -> None:
        self.user_defined = TAGS if user_defined_tags else ()
        self.plain: list[bytes] = [bytes([i]) for i in range(256)] + [p.encode() for p in PIECES]
        self.special: dict[str, int] = {s: len(self.plain) + i for i, s in enumerate(SPECIALS)}
        self.pieces: list[bytes] = self.plain + [s.encode() for s in SPECIALS]
        self._ids = {p: i for i, p in enumerate(self.plain)}
        self._longest = max(len(p) for p in self.plain)
        self.eos = self.special["<|endoftext|>"]
        self.eog = frozenset(self.special[s] for s in EOG)

    def __len__(self) -> int:
        return len(self.pieces)

    def encode_plain(self, data: bytes) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(data):
            for n in range(min(self._longest, len(data) - i), 0, -1):
                tok = self._ids.get(data[i : i + n])
                if tok is not None:
                    out.append(tok)
                    i += n
                    break
        return out

    def encode(self, text: str, *, special: bool) -> list[int]:
        parsed = SPECIALS if special else self.user_defined
        if not parsed:
            return self.encode_plain(text.encode("utf-8"))
        out: list[int] = []
        pos = 0
        while pos < len(text):
            hits = [(text.find(s, pos), s) for s in parsed if text.find(s, pos) >= 0]
            if not hits:
                out.extend(self.encode_plain(text[pos:].encode("utf-8")))
                break
            at, s = min(hits, key=lambda h: (h[0], -len(h[1])))
            out.extend(self.encode_plain(text[pos:at].encode("utf-8")))
            out.append(self.special[s])
            pos = at + len(s)
        return out

    # the interface llguidance.TokenizerWrapper reads
    @property
    def tokens(self) -> list[bytes]:
        return self.plain + [b"\xff" + s.encode() for s in SPECIALS]

    @property
    def special_token_ids(self) -> list[int]:
        return sorted(self.special.values())

    eos_token_id = property(lambda self: self.eos)
    bos_token_id = None

    def __call__(self, data: bytes | str) -> list[int]:
        return self.encode_plain(data.encode("utf-8") if isinstance(data, str) else data)


class ScriptedBackend(Backend):
    """A backend whose model writes *reply* (or one of several) after *marker* (see the module docstring)."""

    name = "scripted"

    def __init__(self, reply: str | Sequence[str], *, marker: str, n_ctx: int = 4096,
                 user_defined_tags: bool = False, per_turn: bool = False) -> None:
        super().__init__()
        self.per_turn = per_turn  # replies are the model's turns in order, not alternatives
        self.vocab = FakeVocab(user_defined_tags=user_defined_tags)
        self.replies = [reply] if isinstance(reply, str) else list(reply)
        self.marker = marker
        self.n_ctx = n_ctx
        self.n_ctx_train = n_ctx
        self.n_vocab = len(self.vocab)
        self.eos_id = self.vocab.eos
        self.path = "scripted"
        self.evaluated = 0  # tokens evaluated, prompt included
        self.closed = False

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return self.vocab.encode(text, special=special)

    def token_bytes(self, token: int) -> bytes:
        return self.vocab.pieces[token]

    def is_eog(self, token: int) -> bool:
        return token in self.vocab.eog

    def eval(self, tokens: Sequence[int]) -> None:
        self._tokens.extend(int(t) for t in tokens)
        self.evaluated += len(tokens)

    def trim(self, n_keep: int) -> None:
        del self._tokens[n_keep:]

    def written(self) -> str:
        """What the model has written so far: the text after the last marker."""
        context = b"".join(self.vocab.pieces[t] for t in self._tokens).decode("utf-8", errors="replace")
        at = context.rfind(self.marker)
        return context[at + len(self.marker) :] if at >= 0 else ""

    def logits(self) -> np.ndarray:
        done = self.written()
        nxt = self.eos_id
        if self.per_turn:
            context = b"".join(self.vocab.pieces[t] for t in self._tokens).decode("utf-8", errors="replace")
            turn = self.replies[max(0, min(context.count(self.marker), len(self.replies)) - 1)]
            script = turn if turn.startswith(done) else None
        else:
            script = next((r for r in self.replies if r.startswith(done)), None)
        if script is not None and len(done) < len(script):
            nxt = self.vocab.encode(script[len(done) :], special=True)[0]
        out = np.zeros(self.n_vocab, dtype=np.float32)
        out[nxt] = 30.0
        return out

    def token_text(self, token: int) -> str:
        return self.vocab.pieces[token].decode("utf-8", "replace")

    def control_tokens(self) -> list[int]:
        return self.vocab.special_token_ids

    def close(self) -> None:
        super().close()
        self.closed = True


def _script(reply: Any) -> str:
    """A reply as the model writes it: JSON data (a dict or list, or a string holding JSON) compact, as
    extraction's grammar writes it; other text as it is."""
    if isinstance(reply, (dict, list)):
        return json.dumps(reply, ensure_ascii=False, separators=(",", ":"))
    if not isinstance(reply, str):
        raise InvalidRequestError(f"a scripted reply must be a string or JSON data, not {type(reply).__name__}",
                                  hint='e.g. scripted_model({"name": "Ann"}) or scripted_model("Hello!")')
    if reply.lstrip()[:1] in ("{", "["):
        try:
            return json.dumps(json.loads(reply), ensure_ascii=False, separators=(",", ":"))
        except ValueError:
            pass
    return reply


def scripted_model(reply: Any = None, *, turns: Sequence[Any] | None = None, tool_format: str = "hermes",
                   n_ctx: int = 4096, user_defined_tags: bool = False, name: str | None = None) -> Model:
    """A :class:`~edgeslm.Model` whose model writes *reply*, or *turns* one after the other (a tool
    call, then the answer that reads its result), in *tool_format*'s family (its chat template and
    tool-call syntax: one of :data:`TEMPLATES`).

    JSON replies (a dict, or a string holding JSON) are written compact, as extraction's grammar
    writes them; give object keys in the schema's property order. A list of strings as *reply*
    gives alternatives (the model follows the first the reply so far begins). ``user_defined_tags``:
    its tool tags are user-defined tokens (as in Qwen 2.5's GGUF, see :data:`TAGS`)."""
    if tool_format not in TEMPLATES:
        raise InvalidRequestError(f"unknown tool_format {tool_format!r}", hint=f"one of {sorted(TEMPLATES)}")
    if (reply is None) == (turns is None):
        raise InvalidRequestError("give a reply or turns=[...], not both", hint='e.g. scripted_model("Hello!")')
    if turns is not None:
        if isinstance(turns, (str, bytes)) or not turns:
            raise InvalidRequestError("turns must be a non-empty list of replies", hint='e.g. turns=[call, "Done."]')
        replies: str | list[str] = [_script(t) for t in turns]
    elif isinstance(reply, (list, tuple)) and all(isinstance(r, str) for r in reply) and reply:
        replies = [_script(r) for r in reply]
    else:
        replies = _script(reply)
    engine = ScriptedBackend(replies, marker=MARKERS[tool_format], n_ctx=n_ctx, user_defined_tags=user_defined_tags,
                             per_turn=turns is not None)
    return Model(engine, name=name or f"scripted-{tool_format}", template=ChatTemplate(TEMPLATES[tool_format]),
                 tool_format=tool_format)


# ----------------------------------------------------------------------------- through the registry


def write_script(path: Path, tool_format: str, reply: str | Sequence[str], *, n_ctx: int = 4096) -> Path:
    """A "model file" for the scripted backend: which family's template it uses, and what it writes."""
    replies = [reply] if isinstance(reply, str) else list(reply)
    path.write_text(json.dumps({"format": tool_format, "replies": replies, "n_ctx": n_ctx}), encoding="utf-8")
    return path


def _open_script(path: Path, req: OpenRequest) -> ScriptedBackend:
    data = json.loads(path.read_text(encoding="utf-8"))
    fmt = data["format"]
    engine = ScriptedBackend(data["replies"], marker=MARKERS[fmt], n_ctx=min(req.n_ctx, data.get("n_ctx", 4096)))
    engine.path = str(path)
    engine.chat_template = TEMPLATES[fmt]
    engine.metadata = {"general.architecture": "scripted", "scripted.tool_format": fmt}
    return engine


#: The scripted backend as an engine of its own: ``edgeslm.load("x.script.json")`` opens it once
#: :func:`register_scripted` has run (the tests register it the way a plugin would).
SCRIPTED_SPEC = BackendSpec(
    name="scripted",
    formats=("scripted",),
    devices=("cpu",),
    describe="a .script.json file (edgeslm.testing)",
    opens=lambda p: p.is_file() and p.name.endswith(".script.json"),
    open=_open_script,
)


def register_scripted() -> None:
    """Register :data:`SCRIPTED_SPEC` (again, if it already is)."""
    register_backend(SCRIPTED_SPEC, replace=True)
