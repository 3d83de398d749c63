"""The scripted backend of :mod:`edgeslm.testing`, with the argument order these tests use."""

from __future__ import annotations

from collections.abc import Sequence

from edgeslm.api.model import Model
from edgeslm.testing import (
    MARKERS,
    SCRIPTED_SPEC,
    TAGS,
    TEMPLATES,
    FakeVocab,
    ScriptedBackend,
    register_scripted,
    write_script,
)

__all__ = [
    "MARKERS", "SCRIPTED_SPEC", "TAGS", "TEMPLATES", "FakeVocab", "ScriptedBackend", "register_scripted",
    "scripted_model", "write_script",
]


def scripted_model(tool_format: str, reply: str | Sequence[str], *, user_defined_tags: bool = False) -> Model:
    """:func:`edgeslm.testing.scripted_model` with the tool format first."""
    engine = ScriptedBackend(reply, marker=MARKERS[tool_format], user_defined_tags=user_defined_tags)
    from edgeslm.decoding.template import ChatTemplate

    return Model(engine, name=f"scripted-{tool_format}", template=ChatTemplate(TEMPLATES[tool_format]),
                 tool_format=tool_format)
