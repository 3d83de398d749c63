"""Chat templating: render a model's (untrusted) Jinja template safely.

Templates come from model metadata, which anyone can write, so they are compiled and rendered
only in a sandbox: Jinja's ``ImmutableSandboxedEnvironment`` (CVE-2024-34359), with limits on the
work, time and memory of one render (:mod:`edgeslm.decoding._sandbox`): a template that crosses
one, or fails with a recursion, overflow or memory error, raises ``UnsafeTemplateError``.

Text the user controls never goes through special-token parsing: the template is rendered with
a unique placeholder in place of every string of a message (its ``content``, ``name``...), and the
prompt is returned as *segments* ``(text, parse_special)`` so the backend parses control tokens
only in text the template itself wrote. A template that rewrites message text (``|lower``,
slicing...) is rendered for real, and accepted only when the control tokens of that rendering are
exactly those the template wrote with the placeholders.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import TemplateError, UnsafeTemplateError

__all__ = [
    "CHATML_TEMPLATE",
    "GEMMA_TEMPLATE",
    "MAX_TEMPLATE_CHARS",
    "PLAIN_TEMPLATE",
    "RENDER_MAX_CHARS",
    "RENDER_MAX_STEPS",
    "RENDER_TIME_LIMIT_S",
    "ChatTemplate",
    "PromptSegments",
    "default_template",
    "looks_instruct",
]

#: Steps one render may take (blocks entered, loop items, calls, filters, operators), plus 1,000
#: per message.
RENDER_MAX_STEPS = 1_000_000
#: Seconds one render may take.
RENDER_TIME_LIMIT_S = 2.0
#: Characters of output (and of any value built while rendering), plus 4 per character of input.
RENDER_MAX_CHARS = 1_000_000
#: Longest template source accepted.
MAX_TEMPLATE_CHARS = 1_000_000

_UNSAFE_HINT = (
    "this model file's chat template may be malicious or broken; do not use it, or pass a trusted "
    "chat_template=... to edgeslm.load()"
)

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

    return datetime.datetime.now().strftime(str(fmt)[:200])


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

        from ._sandbox import BoundedSandbox

        if not isinstance(self.source, str):
            raise TemplateError(
                f"a chat template must be a string, not {type(self.source).__name__}",
                hint="pass chat_template='{% for message in messages %}...' to edgeslm.load()",
            )
        if len(self.source) > MAX_TEMPLATE_CHARS:
            raise UnsafeTemplateError(
                f"the chat template is {len(self.source):,} characters long, more than {MAX_TEMPLATE_CHARS:,}",
                hint=_UNSAFE_HINT,
            )
        self._env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined)
        self._env.filters["tojson"] = _tojson
        self._env.wrap_filters()
        self._env.globals["raise_exception"] = _raise_exception
        self._env.globals["strftime_now"] = _strftime_now
        try:
            self._tmpl = self._env.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise TemplateError(
                f"the model's chat template does not compile: {exc}",
                hint="pass chat_template=... to edgeslm.load() to override it",
            ) from exc
        except Exception as exc:  # RecursionError, MemoryError, SyntaxError (blocks nested too deeply)...
            raise UnsafeTemplateError(
                f"the model's chat template cannot be compiled safely: {type(exc).__name__}: {str(exc)[:200]}",
                hint=_UNSAFE_HINT,
            ) from None

    def render_text(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> str:
        """Render to one string (no special-token separation), within the render limits."""
        import jinja2
        from jinja2.sandbox import SecurityError

        from ._sandbox import RenderBudget, RenderLimitError, active, estimate_size, reset

        messages = list(messages)
        size_in = estimate_size(messages, cap=10**9) + estimate_size(kwargs, cap=10**9)
        budget = RenderBudget(
            max_steps=RENDER_MAX_STEPS + 1_000 * len(messages),
            max_chars=RENDER_MAX_CHARS + 4 * size_in,
            time_limit_s=RENDER_TIME_LIMIT_S,
        )
        token = active(budget)
        try:
            return self._env.concat(  # type: ignore[no-any-return]
                self._tmpl.generate(
                    messages=messages,
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                    add_generation_prompt=kwargs.pop("add_generation_prompt", True),
                    **kwargs,
                )
            )
        except RenderLimitError as exc:
            raise UnsafeTemplateError(
                f"the model's chat template was stopped: it {exc.what}", hint=_UNSAFE_HINT
            ) from None
        except SecurityError as exc:
            raise UnsafeTemplateError(
                f"the model's chat template tried to reach Python internals and was stopped: {exc}",
                hint=_UNSAFE_HINT,
            ) from exc
        except TemplateError:
            raise
        except (RecursionError, MemoryError, OverflowError) as exc:
            what = {RecursionError: "recursed too deeply", MemoryError: "ran out of memory"}.get(
                type(exc), f"overflowed: {str(exc)[:200]}"
            )
            raise UnsafeTemplateError(f"the model's chat template was stopped: it {what}", hint=_UNSAFE_HINT) from None
        except (jinja2.TemplateError, Exception) as exc:
            raise TemplateError(
                f"the model's chat template failed to render: {type(exc).__name__}: {str(exc)[:300]}",
                hint="check the message roles/contents, or pass chat_template=... to edgeslm.load()",
            ) from None
        finally:
            reset(token)

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        is_special_text: Callable[[str], bool] | None = None,
        *,
        control_tokens: Callable[[str], list[int]] | None = None,
        **kwargs: Any,
    ) -> PromptSegments:
        """Render *messages* into segments; no string of a message is ever special-parsed.

        ``control_tokens(s)`` lists the control tokens ``s`` gives when parsed for them; it is only
        needed for templates that rewrite message text: their rendering is accepted when it holds
        exactly the control tokens the template wrote itself. (``is_special_text(s)``, whether
        ``s`` holds control-token text, is the older, weaker check: it looks at the messages as
        given, not at what the template made of them.)
        """
        # A placeholder has no whitespace (it survives `| trim`), letters of both cases (`| lower`,
        # `| upper`, `| title` change it, so the rewrite is seen), and digits that no case change alters.
        nonce = f"{secrets.randbits(53):016d}"
        slots: list[str] = []
        keys: list[list[str]] = []
        for msg in messages:
            keys.append([k for k, v in msg.items() if k != "role" and isinstance(v, str) and v])
            slots.extend(msg[k] for k in keys[-1])

        def masked(keep: set[int] | None) -> list[dict[str, Any]]:
            out, n = [], 0
            for msg, names in zip(messages, keys, strict=True):
                m = dict(msg)
                for k in names:
                    if keep is None or n in keep:
                        m[k] = f"\ue010Ab{nonce}:{n}zY\ue011"
                    n += 1
                out.append(m)
            return out

        segments, intact = _split(self.render_text(masked(None), **kwargs), nonce, slots)
        if not _rewritten(segments, nonce):
            return segments
        # The template rewrote some placeholders (|lower, slicing...): render again with the real
        # text of those, keeping the placeholders it wrote unchanged; when a text is both kept and
        # rewritten, render the real messages. Accept the result only if its template-side segments
        # hold exactly the control tokens of the first rendering (none came from message text).
        again, _ = _split(self.render_text(masked(intact), **kwargs), nonce, slots)
        if _rewritten(again, nonce):
            again = [(self.render_text(list(messages), **kwargs), True)]
        if control_tokens is not None:
            before = [t for text, special in segments if special for t in control_tokens(text)]
            after = [t for text, special in again if special for t in control_tokens(text)]
            if before != after:
                raise TemplateError(
                    "this chat template rewrites message text, and the rewritten text holds control "
                    "tokens that the template did not write itself",
                    hint="remove special-token text (such as <|im_start|>, in any letter case) from the "
                    "messages, or pass a chat_template=... that inserts message text unchanged",
                )
        elif is_special_text is None or any(is_special_text(c) for c in slots):
            raise TemplateError(
                "this chat template rewrites message text, so the messages cannot be kept apart from "
                "its control tokens",
                hint="remove special tokens such as <|im_start|> from the messages, or pass a "
                "chat_template=... that inserts message text unchanged",
            )
        return again


_INSTRUCT_WORDS = re.compile(r"(?:^|[^a-z0-9])(it|instruct|instruction|chat|sft|dpo|rlhf)(?:$|[^a-z0-9])")


def looks_instruct(metadata: dict[str, str]) -> bool:
    """Whether a model's GGUF metadata names an instruction-tuned or chat model
    (``general.finetune``, ``general.name``, ``general.basename`` or ``general.tags``: "it",
    "Instruct", "chat"...). Conversion tools write it from the model's name; a base model has none."""
    text = " ".join(str(metadata.get(f"general.{k}", "")) for k in ("finetune", "name", "basename", "tags"))
    return bool(_INSTRUCT_WORDS.search(text.lower()))


def _split(text: str, nonce: str, slots: list[str]) -> tuple[PromptSegments, set[int]]:
    """Segments of a rendering with placeholders (each replaced by its plain text), and the
    placeholders found unchanged."""
    segments: PromptSegments = []
    intact: set[int] = set()
    pos = 0
    for found in re.finditer("\ue010Ab" + nonce + r":(\d+)zY\ue011", text):
        if found.start() > pos:
            segments.append((text[pos : found.start()], True))
        n = int(found.group(1))
        intact.add(n)
        segments.append((slots[n], False))
        pos = found.end()
    if pos < len(text):
        segments.append((text[pos:], True))
    return [s for s in segments if s[0]], intact


def _rewritten(segments: PromptSegments, nonce: str) -> bool:
    """Whether what remains of a placeholder the template changed is in the template's text."""
    own = "".join(t for t, special in segments if special)
    return nonce in own or "\ue010" in own or "\ue011" in own


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    from ._sandbox import RenderLimitError

    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= 8):
        raise RenderLimitError(f"asked for a tojson indent of {indent!r} (at most 8)")
    return json.dumps(value, ensure_ascii=False, indent=indent)


def default_template(architecture: str, has_token: Callable[[str], bool], *,
                     instruct: bool = True) -> tuple[str, list[str]]:
    """Template (and extra stop strings) for a model whose file carries none.

    A base model (``instruct=False``) gets :data:`PLAIN_TEMPLATE` even where its vocabulary holds
    turn tokens: it never learned them (Gemma-3-270M base, 24 contact records extracted: 11 exact
    and 68/96 fields with plain text, 0 and 30/96 with Gemma's turns)."""
    if instruct and architecture.startswith("gemma") and has_token("<start_of_turn>"):
        return GEMMA_TEMPLATE, ["<end_of_turn>"]
    if instruct and has_token("<|im_start|>"):
        return CHATML_TEMPLATE, ["<|im_end|>"]
    return PLAIN_TEMPLATE, ["\nUser:"]
