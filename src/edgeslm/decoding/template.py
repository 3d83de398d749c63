"""Chat templating: render a model's (untrusted) Jinja template safely.

Templates come from model metadata, which anyone can write, so they are compiled and rendered
only in Jinja's ``ImmutableSandboxedEnvironment`` (CVE-2024-34359). Message contents never go
through special-token parsing: the template is rendered with a unique placeholder in place of each
content, and the prompt is returned as *segments* ``(text, parse_special)`` so the backend parses
control tokens only in text the template itself wrote.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import TemplateError, UnsafeTemplateError

__all__ = ["CHATML_TEMPLATE", "GEMMA_TEMPLATE", "PLAIN_TEMPLATE", "ChatTemplate", "PromptSegments", "default_template"]

# Used when a model carries no template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma's turn format, for Gemma GGUFs (such as base models) that carry no template.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\n\n' %}{% set msgs = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set msgs = messages %}{% endif %}"
    "{% for message in msgs %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content']"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# For base models whose vocabulary has no chat control tokens.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

PromptSegments = list[tuple[str, bool]]
"""A rendered prompt: pieces of text, each with whether control tokens may be parsed in it."""


def _raise_exception(message: str) -> None:
    raise TemplateError(
        f"the chat template refused the conversation: {message}",
        hint="fix the messages as the template asks (roles alternating user/assistant, a system message "
        "first...), or pass chat_template= to load()",
    )


def _strftime_now(fmt: str) -> str:
    import datetime

    return datetime.datetime.now().strftime(fmt)


@dataclass
class ChatTemplate:
    """A compiled, sandboxed chat template."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings for templates whose end-of-turn token is not an end-of-generation token."""

    def __post_init__(self) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self._env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined
        )
        self._env.filters["tojson"] = _tojson
        self._env.globals["raise_exception"] = _raise_exception
        self._env.globals["strftime_now"] = _strftime_now
        try:
            self._tmpl = self._env.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise TemplateError(
                f"the model's chat template does not compile: {exc}",
                hint="pass chat_template=... to edgeslm.load() to override it",
            ) from exc

    def render_text(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> str:
        """Render to one string (no special-token separation)."""
        import jinja2
        from jinja2.sandbox import SecurityError

        try:
            return self._tmpl.render(
                messages=list(messages),
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=kwargs.pop("add_generation_prompt", True),
                **kwargs,
            )
        except SecurityError as exc:
            raise UnsafeTemplateError(
                f"the model's chat template tried to reach Python internals and was stopped: {exc}",
                hint="this model file may be malicious; do not use it, or pass a trusted "
                "chat_template=... to edgeslm.load()",
            ) from exc
        except TemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise TemplateError(
                f"the model's chat template failed to render: {exc}",
                hint="check the message roles/contents, or pass chat_template=... to edgeslm.load()",
            ) from exc

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        is_special_text: Callable[[str], bool] | None = None,
        **kwargs: Any,
    ) -> PromptSegments:
        """Render *messages* into segments; message contents are never special-parsed.

        ``is_special_text(s)`` says whether ``s`` would produce a control token when parsed;
        it is only needed for templates that rewrite message contents.
        """
        nonce = secrets.token_hex(8)
        slots: dict[str, str] = {}
        masked = []
        for i, msg in enumerate(messages):
            m = dict(msg)
            content = m.get("content")
            if isinstance(content, str) and content:
                key = f"\ue010ES{nonce}S{i}\ue011"  # not whitespace: survives `| trim` in templates
                slots[key] = content
                m["content"] = key
            masked.append(m)
        text = self.render_text(masked, **kwargs)
        if all(text.count(k) == 1 for k in slots):
            return _split(text, slots)
        # The template rewrote or duplicated a content: render for real and only allow it when
        # no user text would turn into a control token.
        text = self.render_text(list(messages), **kwargs)
        if is_special_text is not None and any(is_special_text(c) for c in slots.values()):
            raise TemplateError(
                "a message contains control-token text and this chat template rewrites message "
                "contents, so it cannot be kept as plain text",
                hint="remove special tokens such as <|im_start|> from the message, or pass a "
                "chat_template=... that inserts contents unchanged",
            )
        return [(text, True)]


def _split(text: str, slots: dict[str, str]) -> PromptSegments:
    positions = sorted((text.index(k), k) for k in slots)
    out: PromptSegments = []
    pos = 0
    for start, key in positions:
        if start > pos:
            out.append((text[pos:start], True))
        out.append((slots[key], False))
        pos = start + len(key)
    if pos < len(text):
        out.append((text[pos:], True))
    return out


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def default_template(architecture: str, has_token: Callable[[str], bool]) -> tuple[str, list[str]]:
    """Template (and extra stop strings) for a model whose file carries none."""
    if architecture.startswith("gemma") and has_token("<start_of_turn>"):
        return GEMMA_TEMPLATE, ["<end_of_turn>"]
    if has_token("<|im_start|>"):
        return CHATML_TEMPLATE, ["<|im_end|>"]
    return PLAIN_TEMPLATE, ["\nUser:"]
