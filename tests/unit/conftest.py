"""Model-free unit tests: the loop, prefill, stop strings, the sampler, retries and tool parsing on
the scripted backend (tests/fakes.py), registered through the same registry as the real engines.

They need no engine: with ``EDGESLM_NO_ENGINES=1`` importing ``llama_cpp`` or
``onnxruntime_genai`` fails here, which ``tests/test_unit_alone.py`` uses to prove it (and to
time the whole of this folder in a fresh interpreter).
"""

from __future__ import annotations

import importlib.abc
import os
import sys

import pytest

BLOCKED = ("llama_cpp", "onnxruntime_genai")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the model-free tests must not need an engine")
        return None


if os.environ.get("EDGESLM_NO_ENGINES") == "1":
    for mod in list(sys.modules):
        if mod.split(".")[0] in BLOCKED:
            del sys.modules[mod]
    sys.meta_path.insert(0, _Blocker())


@pytest.fixture(autouse=True)
def _scripted_registered() -> None:
    from tests.fakes import register_scripted

    register_scripted()
