"""Defer ``rfc3987_syntax`` until a schema uses the ``iri`` / ``iri-reference`` formats.

``jsonschema`` (with the ``format-nongpl`` extra edgeslm installs) imports ``rfc3987_syntax`` while it is
imported itself, and that module builds its lark grammars at import: 1 s on a quiet 2-core machine, 3.7 s
under load, paid inside the first ``extract`` or tool call of every process (issue #26). jsonschema uses one
function of it, ``is_valid_syntax``, only to check those two formats. Before edgeslm first imports
jsonschema, a stand-in module whose ``is_valid_syntax`` imports the real module on first use is put in its
place; any other attribute does the same. Nothing changes when the app has imported either module already.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

NAME = "rfc3987_syntax"


class _Deferred(types.ModuleType):
    """Stands in for the real module until something of it is used."""

    def _real(self) -> types.ModuleType:
        if sys.modules.get(NAME) is self:
            del sys.modules[NAME]
        return importlib.import_module(NAME)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(self._real(), name)


def install() -> None:
    """Put the stand-in in place, unless jsonschema or the module is imported already, or it is absent."""
    if "jsonschema" in sys.modules or NAME in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(NAME)
    except (ImportError, ValueError):
        return
    if spec is None:
        return
    stub = _Deferred(NAME, "deferred by edgeslm until a schema uses the iri formats")
    stub.__spec__ = spec  # find_spec() of a module in sys.modules answers with this

    def is_valid_syntax(*args: Any, **kwargs: Any) -> Any:
        return stub._real().is_valid_syntax(*args, **kwargs)

    stub.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
    sys.modules[NAME] = stub
